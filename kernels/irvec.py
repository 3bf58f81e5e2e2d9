"""LLVM IR for 16 lanes of 32-bit words, shared by the kernels' intrinsics.

Everything here is target-independent IR (``shufflevector``, integer ops on
``<16 x i32>``): LLVM lowers it to one zmm where the target has AVX-512, two ymm
or four xmm elsewhere, so a module that is not AVX-512-only may use it too.
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

I32 = ir.IntType(32)
V16I32 = ir.VectorType(I32, 16)


def array_data(context, builder: ir.IRBuilder, signature, args) -> Callable[[int], ir.Value]:
    """In an intrinsic's codegen: n ↦ the data pointer of its array argument n."""

    def data(n: int) -> ir.Value:
        return context.make_array(signature.args[n])(context, builder, args[n]).data

    return data


def const16(v: int) -> ir.Constant:
    """<16 x i32> of the constant ``v`` in every lane."""
    return ir.Constant(V16I32, [v] * 16)


def splat(builder: ir.IRBuilder, v: ir.Value, lanes: int) -> ir.Value:
    """<lanes x i32> of the i32 ``v`` in every lane."""
    vec = ir.VectorType(I32, lanes)
    one = builder.insert_element(ir.Constant(vec, None), v, I32(0))
    return builder.shuffle_vector(one, one, ir.Constant(vec, [0] * lanes))


def splat16(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """<16 x i32> of the i32 ``v`` in every lane."""
    return splat(builder, v, 16)


def rotr16(builder: ir.IRBuilder, x: ir.Value, n: int) -> ir.Value:
    """Every lane of ``x`` rotated right by ``n`` bits (one ``vprord`` on AVX-512)."""
    return builder.or_(builder.lshr(x, const16(n)), builder.shl(x, const16(32 - n)))


def _transpose_masks(b: int) -> tuple[list[int], list[int]]:
    """The shufflevector masks that swap the off-diagonal b×b blocks of rows i and i + b
    (over the 32 words of row i then row i + b)."""
    low = [j if j & b == 0 else 16 + j - b for j in range(16)]
    high = [j + b if j & b == 0 else 16 + j for j in range(16)]
    return low, high


def transposed16(builder: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """The 16 <16 x i32> rows transposed: word j of row i becomes word i of row j
    (4 rounds of 2-source shuffles, 64 in all, every value in registers)."""
    rows = list(rows)
    for b in (8, 4, 2, 1):
        low, high = _transpose_masks(b)
        for i in range(16):
            if i & b:
                continue
            lo = builder.shuffle_vector(rows[i], rows[i + b], ir.Constant(V16I32, low))
            hi = builder.shuffle_vector(rows[i], rows[i + b], ir.Constant(V16I32, high))
            rows[i], rows[i + b] = lo, hi
    return rows


def lane_xors16(builder: ir.IRBuilder, rows: list[ir.Value]) -> ir.Value:
    """The <16 x i32> whose lane i is the XOR of the 16 lanes of rows[i]: four rounds
    that each XOR two halves of every row's lanes and pack two rows' halves into one
    vector (30 two-source shuffles and 15 XORs in all)."""
    width = 16  # lanes each row still has in play
    while len(rows) > 1:
        half = width // 2
        # Of each source's 16 lanes, the rows' first (lo) or second (hi) halves, in order.
        lo = [b + j for b in range(0, 32, width) for j in range(half)]
        hi = [b + half + j for b in range(0, 32, width) for j in range(half)]
        rows = [
            builder.xor(
                builder.shuffle_vector(rows[i], rows[i + 1], ir.Constant(V16I32, lo)),
                builder.shuffle_vector(rows[i], rows[i + 1], ir.Constant(V16I32, hi)),
            )
            for i in range(0, len(rows), 2)
        ]
        width = half
    return rows[0]
