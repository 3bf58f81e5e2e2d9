"""Transactions: their payloads, encoding, signing and stateless rules (PROTOCOL §8–§10).

A transaction on the wire is the msgpack array

    [chain_id, kind, sender, nonce, fee, payload, signature]

where ``payload`` is the array of the record that ``kind`` names. The
signature covers ``tagged_hash("tx-sign", signing_bytes(tx))``: the
canonical encoding of every field but the signature, chain_id included, so a
transaction signed for one network is invalid on every other (replay
protection). The txid is ``tagged_hash("txid", full encoding)``.

Only rules that need nothing but the transaction live here. Balances, nonces,
job and dataset existence, expiry against the current height and job shapes
against a network's mining parameters belong to the state transition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import Any, ClassVar

from consensus.encoding import (
    U32,
    U64,
    U64_MAX,
    Bytes,
    EnumOf,
    Field,
    ListOf,
    RecordOf,
    Schema,
    Str,
    Variant,
    decode_record,
    encode_record,
)
from consensus.errors import EncodeError, InvalidTransaction
from consensus.hashing import TAG_TX_SIGN, TAG_TXID, Hash32, tagged_hash
from consensus.keys import (
    ADDRESS_SIZE,
    PrivateKey,
    VerifyBatch,
    address,
    verify_many,
    verify_signature,
)
from kernels.params import MAX_K

MAX_JOB_DIM = 16_384
"""Largest m and n of a posted job (*tunable*). It bounds a fraud proof's row of C
(4·n bytes) so that the largest fraud proof fits in MAX_TX_SIZE."""

MAX_BRANCH_LEN = 32
"""A Merkle branch of a tree with up to 2^32 leaves; matrices have at most 2^16 rows."""

MAX_METADATA_BYTES = 4096
MAX_SEALED_KEY_BYTES = 128
SEALED_BOX_OVERHEAD = 48
"""libsodium crypto_box_seal adds an ephemeral public key (32) and a MAC (16)."""
MAX_DATASET_CHUNK_SIZE = 1 << 20
"""Chunks travel in one blob_chunk message each, so they are kept to 1 MiB."""
MAX_RECORD_JOBS = 16
"""Job ids one model_record may cite: a training step of the reference MLP uses 5."""
MAX_DATASET_NAME_BYTES = 256
MAX_RESULT_CLAIMS = 64
"""Jobs one job_result may claim: a miner batches the results of its non-winning attempts."""

MAX_CHALLENGE_ROWS = 8
"""Rows of C one result_challenge may ask a claim to reveal on chain (PROTOCOL §8)."""

MAX_TX_SIZE = 256 * 1024
"""Largest encoded transaction. The largest one is a fraud proof at k = 65,536 and
n = 16,384: row of A 64 KiB + column of B 64 KiB + row of C 64 KiB + three
branches (~3.4 KiB) ≈ 196 KiB. 256 KiB fits it with room and still caps what a
peer can make a node buffer and hash for one transaction."""

HASH = Bytes(32)
ADDRESS = Bytes(ADDRESS_SIZE)
BRANCH = ListOf(HASH, max=MAX_BRANCH_LEN)


class TxKind(IntEnum):
    """What a transaction does; its number is the wire value (u8)."""

    TRANSFER = 0
    JOB_POST = 1
    JOB_CANCEL = 2
    FRAUD_PROOF = 3
    DATASET_REGISTER = 4
    ACCESS_GRANT = 5
    ACCESS_REVOKE = 6
    ACCESS_LOG = 7
    MODEL_RECORD = 8
    MODEL_PUBLISH = 9
    JOB_RESULT = 10
    RESULT_CHALLENGE = 11
    RESULT_ROWS = 12


@dataclass(frozen=True)
class TransferPayload:
    """Move ``amount`` from the sender to address ``to``."""

    to: bytes
    amount: int
    SCHEMA: ClassVar[Schema] = (Field("to", ADDRESS), Field("amount", U64))


@dataclass(frozen=True)
class JobPostPayload:
    """Ask miners to compute A·B (m×k by k×n, committed by root_a / root_b).

    ``fee`` is the reward escrowed from the sender and paid to the miner after
    the challenge window (not the transaction fee, which the block producer gets).
    """

    m: int
    k: int
    n: int
    root_a: bytes
    root_b: bytes
    fee: int
    expiry_height: int
    SCHEMA: ClassVar[Schema] = (
        Field("m", U32),
        Field("k", U32),
        Field("n", U32),
        Field("root_a", HASH),
        Field("root_b", HASH),
        Field("fee", U64),
        Field("expiry_height", U64),
    )


@dataclass(frozen=True)
class JobCancelPayload:
    """Withdraw an unmined posted job and release its escrow."""

    job_id: bytes
    SCHEMA: ClassVar[Schema] = (Field("job_id", HASH),)


@dataclass(frozen=True)
class FraudProofPayload:
    """Show that C[i, j] ≠ row i of A · column j of B for a job's claimed result.

    ``claim_id`` names the claim it disproves: the hash of the block that
    claimed the job, or the txid of the job_result that did. ``c_row`` is row
    i of C as int32 little-endian; each opened vector comes with its branch
    against root_a, root_b and the claim's result_root.
    """

    claim_id: bytes
    job_id: bytes
    i: int
    j: int
    a_row: bytes
    a_branch: tuple[bytes, ...]
    b_col: bytes
    b_branch: tuple[bytes, ...]
    c_row: bytes
    c_branch: tuple[bytes, ...]
    SCHEMA: ClassVar[Schema] = (
        Field("claim_id", HASH),
        Field("job_id", HASH),
        Field("i", U32),
        Field("j", U32),
        Field("a_row", Bytes(max=MAX_K)),
        Field("a_branch", BRANCH),
        Field("b_col", Bytes(max=MAX_K)),
        Field("b_branch", BRANCH),
        Field("c_row", Bytes(max=4 * MAX_JOB_DIM)),
        Field("c_branch", BRANCH),
    )


@dataclass(frozen=True)
class DatasetRegisterPayload:
    """Register an encrypted dataset: its chunk Merkle root, size and metadata."""

    content_root: bytes
    size: int
    chunk_size: int
    metadata: str
    SCHEMA: ClassVar[Schema] = (
        Field("content_root", HASH),
        Field("size", U64),
        Field("chunk_size", U32),
        Field("metadata", Str(max=MAX_METADATA_BYTES)),
    )


@dataclass(frozen=True)
class AccessGrantPayload:
    """Give ``grantee`` the dataset key, sealed to its X25519 key, until ``expiry_height``."""

    dataset_id: bytes
    grantee: bytes
    sealed_key: bytes
    expiry_height: int
    SCHEMA: ClassVar[Schema] = (
        Field("dataset_id", HASH),
        Field("grantee", ADDRESS),
        Field("sealed_key", Bytes(max=MAX_SEALED_KEY_BYTES)),
        Field("expiry_height", U64),
    )


@dataclass(frozen=True)
class AccessRevokePayload:
    """Stop future reads of a dataset by ``grantee``."""

    dataset_id: bytes
    grantee: bytes
    SCHEMA: ClassVar[Schema] = (Field("dataset_id", HASH), Field("grantee", ADDRESS))


@dataclass(frozen=True)
class AccessLogPayload:
    """A grantee's on-chain request to read a dataset, made before any data flows."""

    dataset_id: bytes
    request_nonce: bytes
    SCHEMA: ClassVar[Schema] = (Field("dataset_id", HASH), Field("request_nonce", HASH))


@dataclass(frozen=True)
class ModelRecordPayload:
    """One training step of model ``model_id``: the jobs it used and the weights it made.

    ``parent_hash`` is the previous step's ``weights_hash`` (zeros at step 0), so
    the records of a model form a hash chain from its first step to its last,
    and each link names the verified jobs (PROTOCOL §8) that computed it.
    """

    model_id: bytes
    step: int
    job_ids: tuple[bytes, ...]
    weights_hash: bytes
    parent_hash: bytes
    dataset: str
    SCHEMA: ClassVar[Schema] = (
        Field("model_id", HASH),
        Field("step", U32),
        Field("job_ids", ListOf(HASH, max=MAX_RECORD_JOBS)),
        Field("weights_hash", HASH),
        Field("parent_hash", HASH),
        Field("dataset", Str(max=MAX_DATASET_NAME_BYTES)),
    )


@dataclass(frozen=True)
class ModelPublishPayload:
    """Publish a model trained on a dataset read locally, with its provenance (§10).

    ``access_log_nonce`` is the ``request_nonce`` of the sender's own confirmed
    access_log of ``dataset_id``: the logged read the model was trained on.
    """

    model_id: bytes
    weights_hash: bytes
    dataset_id: bytes
    content_root: bytes
    access_log_nonce: bytes
    metadata: str
    SCHEMA: ClassVar[Schema] = (
        Field("model_id", HASH),
        Field("weights_hash", HASH),
        Field("dataset_id", HASH),
        Field("content_root", HASH),
        Field("access_log_nonce", HASH),
        Field("metadata", Str(max=MAX_METADATA_BYTES)),
    )


@dataclass(frozen=True)
class JobClaim:
    """One job a job_result claims, with the Merkle root of the rows of its C."""

    job_id: bytes
    result_root: bytes
    SCHEMA: ClassVar[Schema] = (Field("job_id", HASH), Field("result_root", HASH))


@dataclass(frozen=True)
class JobResultPayload:
    """Claim posted jobs whose product C the sender computed and serves (PROTOCOL §8).

    Each claim locks a bond from the sender's balance; after the challenge
    window the job's reward and the bond go to the sender, unless a fraud
    proof shows an entry of C wrong, which refunds the poster and burns the bond.
    """

    claims: tuple[JobClaim, ...]
    SCHEMA: ClassVar[Schema] = (Field("claims", ListOf(RecordOf(JobClaim), max=MAX_RESULT_CLAIMS)),)


@dataclass(frozen=True)
class ResultChallengePayload:
    """The poster of a claimed job could not get its C: the claim (``claim_id``) must
    reveal these rows of C on chain, opened against its result_root, before the job is
    due, or the job is refunded as if a fraud proof had been sent (PROTOCOL §8)."""

    claim_id: bytes
    job_id: bytes
    rows: tuple[int, ...]
    SCHEMA: ClassVar[Schema] = (
        Field("claim_id", HASH),
        Field("job_id", HASH),
        Field("rows", ListOf(U32, max=MAX_CHALLENGE_ROWS)),
    )


@dataclass(frozen=True)
class RevealedRow:
    """Row ``index`` of a claimed C (int32 little-endian) and its branch against the
    claim's result_root."""

    index: int
    row: bytes
    branch: tuple[bytes, ...]
    SCHEMA: ClassVar[Schema] = (
        Field("index", U32),
        Field("row", Bytes(max=4 * MAX_JOB_DIM)),
        Field("branch", BRANCH),
    )


@dataclass(frozen=True)
class ResultRowsPayload:
    """Rows of a claimed C that a result_challenge asked for (some or all of those not
    revealed yet), each opened against the claim's result_root. Anyone holding C may
    send it; the claim is then paid as usual unless a fraud proof shows an entry wrong."""

    claim_id: bytes
    job_id: bytes
    rows: tuple[RevealedRow, ...]
    SCHEMA: ClassVar[Schema] = (
        Field("claim_id", HASH),
        Field("job_id", HASH),
        Field("rows", ListOf(RecordOf(RevealedRow), max=MAX_CHALLENGE_ROWS)),
    )


Payload = (
    TransferPayload
    | JobPostPayload
    | JobCancelPayload
    | FraudProofPayload
    | DatasetRegisterPayload
    | AccessGrantPayload
    | AccessRevokePayload
    | AccessLogPayload
    | ModelRecordPayload
    | ModelPublishPayload
    | JobResultPayload
    | ResultChallengePayload
    | ResultRowsPayload
)

PAYLOAD_TYPES: dict[TxKind, type] = {
    TxKind.TRANSFER: TransferPayload,
    TxKind.JOB_POST: JobPostPayload,
    TxKind.JOB_CANCEL: JobCancelPayload,
    TxKind.FRAUD_PROOF: FraudProofPayload,
    TxKind.DATASET_REGISTER: DatasetRegisterPayload,
    TxKind.ACCESS_GRANT: AccessGrantPayload,
    TxKind.ACCESS_REVOKE: AccessRevokePayload,
    TxKind.ACCESS_LOG: AccessLogPayload,
    TxKind.MODEL_RECORD: ModelRecordPayload,
    TxKind.MODEL_PUBLISH: ModelPublishPayload,
    TxKind.JOB_RESULT: JobResultPayload,
    TxKind.RESULT_CHALLENGE: ResultChallengePayload,
    TxKind.RESULT_ROWS: ResultRowsPayload,
}
_KIND_OF: dict[type, TxKind] = {cls: kind for kind, cls in PAYLOAD_TYPES.items()}

UNSIGNED = bytes(64)
"""Placeholder signature of a transaction that has not been signed yet."""


@dataclass(frozen=True)
class Transaction:
    """A signed request by ``sender`` (an Ed25519 public key) to change the state."""

    chain_id: int
    kind: TxKind
    sender: bytes
    nonce: int
    fee: int
    payload: Payload
    signature: bytes
    SCHEMA: ClassVar[Schema] = (
        Field("chain_id", U32),
        Field("kind", EnumOf(TxKind)),
        Field("sender", Bytes(32)),
        Field("nonce", U64),
        Field("fee", U64),
        Field("payload", Variant("kind", PAYLOAD_TYPES)),
        Field("signature", Bytes(64)),
    )

    # A transaction's bytes are hashed for its txid, cut for its signing digest
    # and measured for the size rules, and a block counts every transaction's
    # size: encoded once per object (frozen, so the bytes cannot go stale).
    @cached_property
    def encoded(self) -> bytes:
        """The canonical encoding (``encode_tx``); EncodeError names a malformed field."""
        return encode_record(self)

    @cached_property
    def txid(self) -> Hash32:
        """Hash of the full canonical encoding (signature included)."""
        return tagged_hash(TAG_TXID, self.encoded)

    @cached_property
    def sender_address(self) -> bytes:
        """The 20-byte address of the sender's account."""
        return address(self.sender)

    def sign(self, key: PrivateKey) -> Transaction:
        """A copy carrying ``key``'s signature; ValueError if ``key`` is not the sender's."""
        if key.public_key.data != self.sender:
            raise ValueError("signing key does not match the transaction's sender")
        return dataclasses.replace(self, signature=key.sign(signing_digest(self)))


def kind_of(payload: Payload) -> TxKind:
    """The TxKind that carries this payload type."""
    return _KIND_OF[type(payload)]


def signed_transaction(
    key: PrivateKey, *, chain_id: int, nonce: int, fee: int, payload: Payload
) -> Transaction:
    """Build and sign a transaction from ``key``; its kind follows the payload's type."""
    unsigned = Transaction(
        chain_id, kind_of(payload), key.public_key.data, nonce, fee, payload, UNSIGNED
    )
    return unsigned.sign(key)


_TX_ARRAY = bytes([0x90 + len(Transaction.SCHEMA)])  # fixarray header: all 7 fields
_UNSIGNED_ARRAY = bytes([0x90 + len(Transaction.SCHEMA) - 1])  # all but the signature
_SIGNATURE_BIN = b"\xc4\x40"  # bin8 header of a 64-byte string


def signing_bytes(tx: Transaction) -> bytes:
    """Canonical encoding of every field but the signature (chain_id included)."""
    if type(tx) is Transaction:
        try:
            full = tx.encoded
        except EncodeError:
            full = b""  # malformed (perhaps only the signature): encode the rest apart
        if full[:1] == _TX_ARRAY and full[-66:-64] == _SIGNATURE_BIN:
            # The signature is the last field, and a msgpack array is its header
            # followed by its items: drop the signature's 66 bytes and count one
            # item fewer. The same bytes as encoding without it, one encoding fewer.
            return _UNSIGNED_ARRAY + full[1:-66]
    return encode_record(tx, omit=frozenset({"signature"}))


def signing_digest(tx: Transaction) -> Hash32:
    """What the signature covers: the tagged hash of ``signing_bytes``.

    The tag keeps a transaction signature from ever being valid for another
    signed message (a P2P handshake answer, for one), whatever its bytes.
    """
    return tagged_hash(TAG_TX_SIGN, signing_bytes(tx))


def encode_tx(tx: Transaction) -> bytes:
    """Canonical bytes of a transaction; EncodeError names a malformed field."""
    if type(tx) is Transaction:
        return tx.encoded
    return encode_record(tx)


def decode_tx(data: bytes, max_size: int = MAX_TX_SIZE) -> Transaction:
    """Decode canonical transaction bytes; DecodeError("<field>: <reason>") otherwise."""
    return decode_record(Transaction, data, max_size)


# ------------------------------------------------------------ stateless rules


def _check_transfer(tx: Transaction, p: TransferPayload) -> None:
    if p.amount == 0:
        raise InvalidTransaction("payload.amount: a transfer must move a positive amount")
    if p.amount > U64_MAX - tx.fee:
        raise InvalidTransaction("payload.amount: amount + fee overflows u64")
    # Self-transfers are refused: they move nothing, and a state transition
    # that reads both balances before writing both would mint money on one.
    if p.to == tx.sender_address:
        raise InvalidTransaction("payload.to: a transfer to the sender itself is not allowed")


def _check_job_post(tx: Transaction, p: JobPostPayload) -> None:
    if not 1 <= p.m <= MAX_JOB_DIM:
        raise InvalidTransaction(f"payload.m: {p.m} is not in [1, {MAX_JOB_DIM}]")
    if not 1 <= p.k <= MAX_K:
        raise InvalidTransaction(f"payload.k: {p.k} is not in [1, {MAX_K}] (int32 exactness)")
    if not 1 <= p.n <= MAX_JOB_DIM:
        raise InvalidTransaction(f"payload.n: {p.n} is not in [1, {MAX_JOB_DIM}]")
    if p.fee == 0:
        raise InvalidTransaction("payload.fee: a posted job must escrow a positive reward")
    if p.fee > U64_MAX - tx.fee:
        raise InvalidTransaction("payload.fee: reward + transaction fee overflows u64")
    if p.expiry_height == 0:
        raise InvalidTransaction("payload.expiry_height: a job cannot expire at genesis")


def _check_fraud_proof(tx: Transaction, p: FraudProofPayload) -> None:
    if len(p.a_row) == 0:
        raise InvalidTransaction("payload.a_row: empty row of A")
    if len(p.a_row) != len(p.b_col):
        raise InvalidTransaction("payload.b_col: row of A and column of B differ in length (k)")
    if len(p.c_row) == 0 or len(p.c_row) % 4:
        raise InvalidTransaction("payload.c_row: must be a non-empty row of int32 values")
    if p.j >= len(p.c_row) // 4:
        raise InvalidTransaction(f"payload.j: column {p.j} is outside the opened row of C")


def _check_dataset_register(tx: Transaction, p: DatasetRegisterPayload) -> None:
    if p.size == 0:
        raise InvalidTransaction("payload.size: a dataset cannot be empty")
    if not 1 <= p.chunk_size <= MAX_DATASET_CHUNK_SIZE:
        raise InvalidTransaction(
            f"payload.chunk_size: {p.chunk_size} is not in [1, {MAX_DATASET_CHUNK_SIZE}]"
        )
    if -(-p.size // p.chunk_size) > 2**32:
        raise InvalidTransaction("payload.size: more than 2^32 chunks")


def _check_access_grant(tx: Transaction, p: AccessGrantPayload) -> None:
    if len(p.sealed_key) <= SEALED_BOX_OVERHEAD:
        raise InvalidTransaction("payload.sealed_key: too short to be a sealed key")
    if p.expiry_height == 0:
        raise InvalidTransaction("payload.expiry_height: a grant cannot expire at genesis")


_ZERO_HASH = bytes(32)


def _check_model_record(tx: Transaction, p: ModelRecordPayload) -> None:
    if p.model_id == _ZERO_HASH:
        raise InvalidTransaction("payload.model_id: the all-zero id is reserved")
    if not p.job_ids:
        raise InvalidTransaction("payload.job_ids: a step must cite the jobs that computed it")
    if len(set(p.job_ids)) != len(p.job_ids):
        raise InvalidTransaction("payload.job_ids: a job is cited twice")
    if p.weights_hash == _ZERO_HASH:
        raise InvalidTransaction("payload.weights_hash: zeros are reserved for 'no parent'")
    # Zeros are the parent of step 0 and of no other step, so a record cannot
    # claim to start a lineage in its middle.
    if p.step == 0 and p.parent_hash != _ZERO_HASH:
        raise InvalidTransaction("payload.parent_hash: step 0 has no parent (must be zeros)")
    if p.step > 0 and p.parent_hash == _ZERO_HASH:
        raise InvalidTransaction(f"payload.parent_hash: step {p.step} must name its parent")


def _check_job_result(tx: Transaction, p: JobResultPayload) -> None:
    if not p.claims:
        raise InvalidTransaction("payload.claims: a job_result must claim at least one job")
    seen: set[bytes] = set()
    for i, claim in enumerate(p.claims):
        if claim.job_id in seen:
            raise InvalidTransaction(f"payload.claims[{i}].job_id: the job is claimed twice")
        seen.add(claim.job_id)
        # Zeros stand for "no result" in a job's state record and a null job's header.
        if claim.result_root == _ZERO_HASH:
            raise InvalidTransaction(f"payload.claims[{i}].result_root: must not be all zeros")


def _check_result_challenge(tx: Transaction, p: ResultChallengePayload) -> None:
    if not p.rows:
        raise InvalidTransaction("payload.rows: a result_challenge must name at least one row")
    if len(set(p.rows)) != len(p.rows):
        raise InvalidTransaction("payload.rows: a row is named twice")


def _check_result_rows(tx: Transaction, p: ResultRowsPayload) -> None:
    if not p.rows:
        raise InvalidTransaction("payload.rows: a result_rows must reveal at least one row")
    if len({r.index for r in p.rows}) != len(p.rows):
        raise InvalidTransaction("payload.rows: a row is revealed twice")
    for i, r in enumerate(p.rows):
        if len(r.row) == 0 or len(r.row) % 4:
            raise InvalidTransaction(f"payload.rows[{i}].row: must be a non-empty row of int32")


def _check_model_publish(tx: Transaction, p: ModelPublishPayload) -> None:
    for name in ("model_id", "weights_hash", "dataset_id", "content_root", "access_log_nonce"):
        if getattr(p, name) == _ZERO_HASH:
            raise InvalidTransaction(f"payload.{name}: must not be all zeros")


FORM_RULES: dict[type, Callable[[Transaction, Any], None]] = {
    TransferPayload: _check_transfer,
    JobPostPayload: _check_job_post,
    FraudProofPayload: _check_fraud_proof,
    DatasetRegisterPayload: _check_dataset_register,
    AccessGrantPayload: _check_access_grant,
    ModelRecordPayload: _check_model_record,
    ModelPublishPayload: _check_model_publish,
    JobResultPayload: _check_job_result,
    ResultChallengePayload: _check_result_challenge,
    ResultRowsPayload: _check_result_rows,
}
"""The stateless rules of a payload, by its type (kinds not here have none beyond
the encoding's); each raises InvalidTransaction naming the field at fault."""


BAD_SIGNATURE = "signature: not a valid signature by the sender"


def check_tx_stateless(tx: Transaction, chain_id: int) -> None:
    """Raise InvalidTransaction unless ``tx`` is valid on its own for network ``chain_id``.

    Cheap checks come first and the signature last, so junk costs little.
    A zero transaction fee is allowed here: the minimum fee is mempool policy.
    """
    check_tx_form(tx, chain_id)
    check_tx_signature(tx)


def check_tx_signature(tx: Transaction) -> None:
    """Raise InvalidTransaction unless the sender signed ``tx`` (after ``check_tx_form``)."""
    if not verify_signature(tx.sender, signing_digest(tx), tx.signature):
        raise InvalidTransaction(BAD_SIGNATURE)


def check_txs_stateless(
    txs: Sequence[Transaction], chain_id: int, verify_batch: VerifyBatch = verify_many
) -> list[Exception | None]:
    """``check_tx_stateless`` of each transaction: None, or the exception it raises.

    The same verdicts, but the signatures of the transactions that pass the
    cheap checks are verified together, by ``verify_batch`` (a node's spreads
    them across cores).
    """
    verdicts: list[Exception | None] = []
    signed: list[int] = []
    for i, tx in enumerate(txs):
        try:
            check_tx_form(tx, chain_id)
        except Exception as e:  # kept to be raised in its turn, whatever it is
            verdicts.append(e)
        else:
            verdicts.append(None)
            signed.append(i)
    valid = verify_batch(
        [(txs[i].sender, signing_digest(txs[i]), txs[i].signature) for i in signed]
    )
    for i, ok in zip(signed, valid, strict=True):
        if not ok:
            verdicts[i] = InvalidTransaction(BAD_SIGNATURE)
    return verdicts


def check_tx_form(tx: Transaction, chain_id: int) -> None:
    """Every rule of ``check_tx_stateless`` but the signature."""
    if type(tx) is not Transaction:
        raise InvalidTransaction(f"expected a Transaction, got {type(tx).__name__}")
    if tx.chain_id != chain_id:
        raise InvalidTransaction(
            f"chain_id: signed for chain {tx.chain_id}, this is chain {chain_id} (replay)"
        )
    try:
        size = len(encode_tx(tx))
    except EncodeError as e:
        raise InvalidTransaction(str(e)) from None
    if size > MAX_TX_SIZE:
        raise InvalidTransaction(f"{size} bytes exceeds the limit of {MAX_TX_SIZE}")
    rule = FORM_RULES.get(type(tx.payload))
    if rule is not None:
        rule(tx, tx.payload)
