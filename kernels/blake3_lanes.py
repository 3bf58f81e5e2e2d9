"""BLAKE3's compression function on 16 lanes at once, as LLVM IR, and what is built
on it: the keyed XOF of a one-block message, and whole messages of any length hashed
16 at a time (the BLAKE3 paper, §2 and §5; the ``blake3`` library is the reference the
tests hold all of it to, bit for bit).

Three callers hash too often for one library call each: the miner hashes every tile's
transcript into its ticket (16,384 per attempt at 2048², :mod:`kernels.tickets`), the
one-call verifier reads ~18 KiB of noise XOF per tile, where four library calls from
Python cost ~7 µs of its ~22, and a matrix commitment hashes every row as a leaf
(2,048 rows of 8 KiB for C's result root, :mod:`consensus.merkle`). Each lane is one
independent message (a tile, a row) or one output block (a position of the XOF), and
the 16 state words stay in registers (16 zmm, or 32 ymm that spill on AVX2).
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels.irvec import I32, V16I32, array_data, const16, rotr16, splat16, transposed16
from kernels.threads import exclusive, own_build

if sys.byteorder != "little":  # Numba itself runs on little-endian CPUs only
    raise ImportError("kernels.blake3_lanes reads bytes as little-endian words")

IV = (
    0x6A09E667,
    0xBB67AE85,
    0x3C6EF372,
    0xA54FF53A,
    0x510E527F,
    0x9B05688C,
    0x1F83D9AB,
    0x5BE0CD19,
)
_MSG_PERMUTATION = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
CHUNK_START = 1
CHUNK_END = 2
ROOT = 8
KEYED_HASH = 16
ONE_BLOCK_ROOT = KEYED_HASH | CHUNK_START | CHUNK_END | ROOT
"""Flags of a keyed hash's only block: its chunk's start and end, and the root."""


def _message_schedule() -> tuple[tuple[int, ...], ...]:
    """Word order of the message in each of the 7 rounds (the permutation applied cumulatively)."""
    rounds = [tuple(range(16))]
    for _ in range(6):
        prev = rounds[-1]
        rounds.append(tuple(prev[i] for i in _MSG_PERMUTATION))
    return tuple(rounds)


_SCHEDULE = _message_schedule()


def _g16(builder: ir.IRBuilder, st: list[ir.Value], a: int, b: int, c: int, d: int, mx, my) -> None:
    """The G function on state words a, b, c, d of every lane."""
    st[a] = builder.add(builder.add(st[a], st[b]), mx)
    st[d] = rotr16(builder, builder.xor(st[d], st[a]), 16)
    st[c] = builder.add(st[c], st[d])
    st[b] = rotr16(builder, builder.xor(st[b], st[c]), 12)
    st[a] = builder.add(builder.add(st[a], st[b]), my)
    st[d] = rotr16(builder, builder.xor(st[d], st[a]), 8)
    st[c] = builder.add(st[c], st[d])
    st[b] = rotr16(builder, builder.xor(st[b], st[c]), 7)


def _rounds16(
    builder: ir.IRBuilder,
    cv: list[ir.Value],
    m: list[ir.Value],
    counter: tuple[ir.Value, ir.Value],
    block_len: ir.Value,
    flags: ir.Value,
) -> list[ir.Value]:
    """The 16 state words after the 7 rounds, from the chaining value ``cv`` (8 words),
    the block ``m`` (16 words), the counter's (low, high) words, the block length and
    the flags: every argument a <16 x i32>, one lane per compression."""
    st = list(cv) + [const16(v) for v in IV[:4]] + [counter[0], counter[1], block_len, flags]
    for o in _SCHEDULE:
        _g16(builder, st, 0, 4, 8, 12, m[o[0]], m[o[1]])
        _g16(builder, st, 1, 5, 9, 13, m[o[2]], m[o[3]])
        _g16(builder, st, 2, 6, 10, 14, m[o[4]], m[o[5]])
        _g16(builder, st, 3, 7, 11, 15, m[o[6]], m[o[7]])
        _g16(builder, st, 0, 5, 10, 15, m[o[8]], m[o[9]])
        _g16(builder, st, 1, 6, 11, 12, m[o[10]], m[o[11]])
        _g16(builder, st, 2, 7, 8, 13, m[o[12]], m[o[13]])
        _g16(builder, st, 3, 4, 9, 14, m[o[14]], m[o[15]])
    return st


def compress16(
    builder: ir.IRBuilder, cv: list[ir.Value], m: list[ir.Value], block_len: int, flags: int
) -> list[ir.Value]:
    """The compression with counter 0 of 16 lanes: its 8 output chaining words."""
    zero = const16(0)
    st = _rounds16(builder, cv, m, (zero, zero), const16(block_len), const16(flags))
    return [builder.xor(st[i], st[i + 8]) for i in range(8)]


@intrinsic
def _xof_blocks16(tctx, key, key_off, msg, block_len, counter0, out, out_off):
    """out[out_off + 16·l …] (16 words) ← output block ``counter0 + l`` of the keyed hash
    of the one-block message ``msg`` (16 words, ``block_len`` bytes of it used), l < 16.

    The root node's output block t is a compression of the same inputs with counter t,
    all 16 words kept: st[i] ^ st[i + 8] and st[i + 8] ^ key[i] for i < 8. The 16 blocks
    come out as word-major vectors and are transposed into block-major stores.
    """
    ip = types.intp
    sig = types.void(key, ip, msg, ip, ip, out, ip)

    def codegen(context, builder, signature, args):
        _, key_off, _, block_len, counter0, _, out_off = args

        data = array_data(context, builder, signature, args)

        def n(v: int) -> ir.Constant:
            return ir.Constant(key_off.type, v)

        key_p, msg_p, out_p = data(0), data(2), data(5)
        key_p = builder.gep(key_p, [key_off])
        cv = [splat16(builder, builder.load(builder.gep(key_p, [n(i)]))) for i in range(8)]
        m = [splat16(builder, builder.load(builder.gep(msg_p, [n(i)]))) for i in range(16)]
        i64 = ir.IntType(64)
        v16i64 = ir.VectorType(i64, 16)
        first = builder.insert_element(
            ir.Constant(v16i64, None),
            builder.sext(counter0, i64) if counter0.type.width < 64 else counter0,
            I32(0),
        )
        counters = builder.add(
            builder.shuffle_vector(first, first, ir.Constant(V16I32, [0] * 16)),
            ir.Constant(v16i64, list(range(16))),
        )
        low = builder.trunc(counters, V16I32)
        high = builder.trunc(builder.lshr(counters, ir.Constant(v16i64, [32] * 16)), V16I32)
        length = splat16(builder, builder.trunc(block_len, I32))
        st = _rounds16(builder, cv, m, (low, high), length, const16(ONE_BLOCK_ROOT))
        words = [builder.xor(st[i], st[i + 8]) for i in range(8)]
        words += [builder.xor(st[i + 8], cv[i]) for i in range(8)]
        for lane, block in enumerate(transposed16(builder, words)):
            at = builder.gep(out_p, [builder.add(out_off, n(16 * lane))])
            builder.store(block, builder.bitcast(at, V16I32.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, cache=True)
def keyed_xof(
    key: np.ndarray, key_off: int, msg: np.ndarray, block_len: int, first_block: int, nbytes: int
) -> np.ndarray:
    """Bytes ``64·first_block …`` (``nbytes`` of them) of the BLAKE3 XOF of the keyed
    hash of a message of one block: ``key[key_off : key_off + 8]`` are the key's
    little-endian words, ``msg`` the message's 16 (zero past ``block_len`` ≤ 64 bytes).
    Equals ``blake3.blake3(message, key=key).digest(nbytes, seek=64·first_block)``."""
    blocks = (nbytes + 63) // 64
    out = np.empty(16 * ((blocks + 15) // 16 * 16), dtype=np.uint32)
    for g in range(0, blocks, 16):
        # An intrinsic: the typing context is implicit.
        _xof_blocks16(key, key_off, msg, block_len, first_block + g, out, 16 * g)  # type: ignore[call-arg]
    return out.view(np.uint8)[:nbytes]


@njit(nogil=True, cache=True, inline="always")
def xof_group(
    key: np.ndarray,
    key_off: int,
    msg: np.ndarray,
    block_len: int,
    first_block: int,
    out: np.ndarray,
    out_off: int,
) -> None:
    """Output blocks ``first_block … first_block + 15`` (1 KiB) of :func:`keyed_xof`'s
    hash into ``out[out_off : out_off + 256]`` (uint32 words): one task's share of an
    XOF spread across threads."""
    # An intrinsic: the typing context is implicit.
    _xof_blocks16(key, key_off, msg, block_len, first_block, out, out_off)  # type: ignore[call-arg]


def message_block(message: bytes) -> np.ndarray:
    """The 16 little-endian words of a message of at most 64 bytes, zero-padded."""
    if len(message) > 64:
        raise ValueError(f"a one-block message has at most 64 bytes, got {len(message)}")
    return np.frombuffer(message.ljust(64, b"\0"), dtype="<u4").astype(np.uint32)


# ------------------------------------------------------------- whole messages, 16 at once

PARENT = 4
DERIVE_KEY_CONTEXT = 32
DERIVE_KEY_MATERIAL = 64
CHUNK_BYTES = 1024
MAX_DEPTH = 54
"""Chaining values a message of fewer than 2^64 bytes can have waiting to merge."""


@intrinsic
def _chunk16(tctx, buf, base, stride, blocks, last_len, key, counter, mode, root, cv):
    """cv (8 × 16 words, word-major) ← the chaining value of one chunk of 16 messages:
    lane l's chunk is ``blocks`` (1 … 16) blocks of 16 words at buf[base + l·stride …],
    the last one holding ``last_len`` bytes (zero-padded to 64); ``counter`` is the
    chunk's index, ``mode`` the hash's mode flags (KEYED_HASH, DERIVE_KEY_*), and a
    ``root`` chunk (the message's only one) sets ROOT on its last block."""
    ip = types.intp
    sig = types.void(buf, ip, ip, ip, ip, key, ip, ip, types.boolean, cv)

    def codegen(context, builder, signature, args):
        _, base, stride, blocks, last_len, _, counter, mode, root, _ = args

        data = array_data(context, builder, signature, args)

        def n(v: int) -> ir.Constant:
            return ir.Constant(base.type, v)

        def i32(v: ir.Value) -> ir.Value:
            return builder.trunc(v, I32)

        buf_p, key_p, cv_p = data(0), data(5), data(9)
        state = [
            cgutils.alloca_once_value(
                builder, splat16(builder, builder.load(builder.gep(key_p, [n(i)])))
            )
            for i in range(8)
        ]
        low = splat16(builder, i32(counter))
        high = splat16(builder, i32(builder.lshr(counter, n(32))))
        last = builder.sub(blocks, n(1))
        end_flags = builder.or_(
            ir.Constant(I32, CHUNK_END),
            builder.select(root, ir.Constant(I32, ROOT), ir.Constant(I32, 0)),
        )
        with cgutils.for_range(builder, blocks) as loop:
            b = loop.index
            rows = []
            for lane in range(16):
                at = builder.add(
                    base, builder.add(builder.mul(stride, n(lane)), builder.mul(b, n(16)))
                )
                rows.append(
                    builder.load(
                        builder.bitcast(builder.gep(buf_p, [at]), V16I32.as_pointer()), align=4
                    )
                )
            m = transposed16(builder, rows)
            is_last = builder.icmp_signed("==", b, last)
            flags = builder.or_(
                i32(mode),
                builder.or_(
                    builder.select(
                        builder.icmp_signed("==", b, n(0)),
                        ir.Constant(I32, CHUNK_START),
                        ir.Constant(I32, 0),
                    ),
                    builder.select(is_last, end_flags, ir.Constant(I32, 0)),
                ),
            )
            length = builder.select(is_last, i32(last_len), ir.Constant(I32, 64))
            cv = [builder.load(v) for v in state]
            st = _rounds16(
                builder, cv, m, (low, high), splat16(builder, length), splat16(builder, flags)
            )
            for i in range(8):
                builder.store(builder.xor(st[i], st[i + 8]), state[i])
        for i in range(8):
            out = builder.bitcast(builder.gep(cv_p, [n(16 * i)]), V16I32.as_pointer())
            builder.store(builder.load(state[i]), out, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _parent16(tctx, left, right, key, mode, root, out):
    """out (8 × 16 words) ← the parent chaining value of ``left`` and ``right`` (each
    8 × 16 words, word-major: one parent node per lane); ``root`` sets ROOT."""
    sig = types.void(left, right, key, types.intp, types.boolean, out)

    def codegen(context, builder, signature, args):
        _, _, _, mode, root, _ = args

        data = array_data(context, builder, signature, args)

        def words(p: ir.Value) -> list[ir.Value]:
            return [
                builder.load(
                    builder.bitcast(builder.gep(p, [I32(16 * i)]), V16I32.as_pointer()), align=4
                )
                for i in range(8)
            ]

        key_p = data(2)
        cv = [splat16(builder, builder.load(builder.gep(key_p, [I32(i)]))) for i in range(8)]
        m = words(data(0)) + words(data(1))
        flags = builder.or_(
            builder.trunc(mode, I32),
            builder.select(root, ir.Constant(I32, PARENT | ROOT), ir.Constant(I32, PARENT)),
        )
        zero = const16(0)
        st = _rounds16(builder, cv, m, (zero, zero), const16(64), splat16(builder, flags))
        out_p = data(5)
        for i in range(8):
            at = builder.bitcast(builder.gep(out_p, [I32(16 * i)]), V16I32.as_pointer())
            builder.store(builder.xor(st[i], st[i + 8]), at, align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, cache=True)
def hash16(
    buf: np.ndarray, base: int, stride: int, length: int, key: np.ndarray, mode: int
) -> np.ndarray:
    """The BLAKE3 hashes (8 × 16 words, word-major: word i of lane l at [i, l]) of 16
    messages of ``length`` bytes each: lane l's bytes are the words buf[base + l·stride …],
    zero from byte ``length`` to the next multiple of 64 (at least one block of them).
    ``key`` is the 8 key words (the IV for a plain hash, the context key when deriving a
    key), ``mode`` the flags.

    Chunks are compressed in order and their chaining values merged as BLAKE3's
    incremental hasher does: after chunk c (not the last), merge while c + 1 is even;
    at the end the last chunk merges with every value still waiting, the final
    merge being the root."""
    chunks = max(1, (length + CHUNK_BYTES - 1) // CHUNK_BYTES)
    stack = np.empty((MAX_DEPTH, 8, 16), dtype=np.uint32)
    depth = 0
    cv = np.empty((8, 16), dtype=np.uint32)
    for c in range(chunks):
        nbytes = min(CHUNK_BYTES, length - c * CHUNK_BYTES)
        blocks = max(1, (nbytes + 63) // 64)
        last_len = nbytes - 64 * (blocks - 1)
        first = base + c * (CHUNK_BYTES // 4)
        # Intrinsics: the typing context is implicit.
        _chunk16(buf, first, stride, blocks, last_len, key, c, mode, chunks == 1, cv)  # type: ignore[call-arg]
        if c == chunks - 1:
            break
        stack[depth] = cv
        depth += 1
        total = c + 1
        while total & 1 == 0:
            _parent16(stack[depth - 2], stack[depth - 1], key, mode, False, stack[depth - 2])
            depth -= 1
            total >>= 1
    while depth > 0:
        _parent16(stack[depth - 1], cv, key, mode, depth == 1, cv)  # type: ignore[call-arg]
        depth -= 1
    return cv


def _prefixed_rows(heads: np.ndarray, rows: np.ndarray, key: np.ndarray, mode: int) -> np.ndarray:
    """out[i] (8 words) = the BLAKE3 hash of heads[i] ‖ rows[i] (uint8 arrays of ``count``
    rows each, the heads a multiple of 4 bytes wide), under ``key`` and ``mode`` as in
    :func:`hash16`: 16 messages per task, each task framing its rows in a buffer of its
    own (zero-padded to whole blocks) that stays in L2 while it is hashed."""
    count, width = rows.shape
    head = heads.shape[1]
    length = head + width
    stride = max(1, (length + 63) // 64) * 16  # words per lane: at least one block
    out = np.empty((count, 8), dtype=np.uint32)
    for batch in prange((count + 15) // 16):
        buf = np.empty(16 * 4 * stride, dtype=np.uint8)
        for lane in range(16):
            i = min(16 * batch + lane, count - 1)  # lanes past the end repeat the last row
            at = 4 * stride * lane
            buf[at : at + head] = heads[i]
            buf[at + head : at + length] = rows[i]
            buf[at + length : at + 4 * stride] = 0  # the last block's padding only
        h = hash16(buf.view(np.uint32), 0, stride, length, key, mode)
        for lane in range(min(16, count - 16 * batch)):
            for w in range(8):
                out[16 * batch + lane, w] = h[w, lane]
    return out


prefixed_row_hashes = exclusive(njit(parallel=True, nogil=True, cache=True)(_prefixed_rows))
prefixed_row_hashes_serial = njit(nogil=True, cache=True)(
    own_build(_prefixed_rows, "prefixed_row_hashes_serial")
)
"""The same hashes on the calling thread: many short messages (a Merkle tree's inner
nodes, 80 bytes each) from any thread, the event loop's too, with no thread pool to wake
and no lock to wait for on a thread-unsafe layer (``kernels.threads``)."""


def derive_key_words(context: bytes) -> np.ndarray:
    """The 8 words of BLAKE3's context key for ``context`` (its derive_key mode: the
    context string hashed with DERIVE_KEY_CONTEXT; the material is then hashed under it
    with DERIVE_KEY_MATERIAL). On the calling thread, by the serial build: one short
    message wakes no thread pool, and a process whose trees need only this build loads
    no other (0.02 s here, after Numba's own start-up of ~0.4 s in a fresh process)."""
    heads = np.zeros((1, 0), dtype=np.uint8)
    # A writable copy: the array type the trees pass, so the build loads one version.
    rows = np.frombuffer(context, dtype=np.uint8).reshape(1, -1).copy()
    iv = np.array(IV, dtype=np.uint32)
    return prefixed_row_hashes_serial(heads, rows, iv, DERIVE_KEY_CONTEXT)[0].copy()


@njit(nogil=True, cache=True)
def pair_hashes(
    nodes: np.ndarray, head: np.ndarray, mid: np.ndarray, key: np.ndarray, mode: int
) -> np.ndarray:
    """((count // 2) × 8 words) the hash of head ‖ nodes[2p] ‖ mid ‖ nodes[2p + 1] for each
    pair p of ``nodes`` (count × 8 words, one hash each; ``head`` and ``mid`` bytes, the
    head a multiple of 4 wide) under ``key`` and ``mode`` as in :func:`hash16`, on the
    calling thread: the parents of one level of a Merkle tree, 16 side by side."""
    pairs = nodes.shape[0] // 2
    wide = 64 + mid.shape[0]
    node_bytes = nodes.view(np.uint8)  # (count, 32): each hash's little-endian bytes
    heads = np.empty((pairs, head.shape[0]), dtype=np.uint8)
    rows = np.empty((pairs, wide), dtype=np.uint8)
    for p in range(pairs):
        heads[p] = head
        rows[p, :32] = node_bytes[2 * p]
        rows[p, 32 : wide - 32] = mid
        rows[p, wide - 32 :] = node_bytes[2 * p + 1]
    return prefixed_row_hashes_serial(heads, rows, key, mode)


@njit(nogil=True, cache=True)
def promoted_tree_root(
    leaves: np.ndarray, head: np.ndarray, mid: np.ndarray, key: np.ndarray, mode: int
) -> np.ndarray:
    """The root (8 words) of the binary tree over ``leaves`` ((count ≥ 1) × 8 words, one
    hash each) whose parents are :func:`pair_hashes` and whose levels of odd length
    promote their last node.

    On the calling thread, every level in one compiled loop: a matrix's 2,047 parents
    at 2048 rows take ~0.2 ms, where a list of 32-byte strings per level took ~0.8."""
    level = leaves.copy()
    while level.shape[0] > 1:
        count = level.shape[0]
        pairs = count // 2
        upper = np.empty(((count + 1) // 2, 8), dtype=np.uint32)
        upper[:pairs] = pair_hashes(level, head, mid, key, mode)
        if count % 2:
            upper[pairs] = level[count - 1]
        level = upper
    return level[0].copy()
