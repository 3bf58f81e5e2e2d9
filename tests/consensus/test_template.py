"""Block templates: one built on top of an earlier body is the template built from scratch."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.blocks import Block, BlockHeader
from consensus.chain import Chain
from consensus.pow import null_job
from consensus.template import TemplateBody, build_template
from tests.support.chainkit import (
    ALICE,
    BOB,
    CAROL,
    MID,
    MINER,
    extend,
    new_chain,
    remine,
    transfer,
)


def on_tip(chain: Chain, *args: Any, **kw: Any) -> tuple[BlockHeader, TemplateBody]:
    """``build_template`` on the chain's tip and state."""
    return build_template(chain.state, chain.header_context(chain.tip.hash), MID, *args, **kw)


KEYS = [ALICE, BOB, CAROL, MINER]

# (sender, recipient, amount, nonce offset): offsets off 0 make gaps and replays,
# huge amounts make overdrafts, so some transactions are skipped in both batches.
_TRANSFERS = st.lists(
    st.tuples(
        st.integers(0, 3), st.integers(0, 3), st.sampled_from([1, 999, 10**15]), st.integers(-1, 1)
    ),
    min_size=0,
    max_size=10,
)


def _transfers(spec: list[tuple[int, int, int, int]], nonces: list[int]) -> list:
    out = []
    for s, r, amount, skew in spec:
        if s == r:
            continue
        out.append(transfer(KEYS[s], KEYS[r], amount, max(0, nonces[s] + skew)))
        nonces[s] += 1
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TRANSFERS, _TRANSFERS)
def test_a_template_on_top_of_an_earlier_one_equals_one_built_from_scratch(first, second):
    chain, clock = new_chain()
    extend(chain, clock, 1)  # past genesis: block 2 opens with its parent's job claim
    nonces = [0, 0, 0, 0]
    early, late = _transfers(first, nonces), _transfers(second, nonces)
    job = null_job(chain.tip.hash, MID).spec
    clock.now += MID.block_time_ms
    _, base = on_tip(chain, early, MINER.address, job, clock.now)
    header, body = on_tip(chain, early + late, MINER.address, job, clock.now, on_top_of=base)
    assert body.txs[: len(base.txs)] == base.txs  # the earlier ones stay first, in order
    # From scratch, the same transactions in the same order give the same template
    # (a transaction skipped by the earlier one may apply on top of it: nonce order).
    scratch_header, scratch = on_tip(chain, body.txs, MINER.address, job, clock.now)
    assert body.txs == scratch.txs
    assert header == scratch_header  # tx_root, state_root and reward included
    assert (body.writes, body.levels) == (scratch.writes, scratch.levels)
    # and the template is a valid block once mined
    block = Block(remine(header, null_job(chain.tip.hash, MID)), body.txs)
    assert chain.add_block(block).status == "connected"


def test_a_body_from_another_tip_is_not_built_on():
    chain, clock = new_chain()
    job = null_job(chain.tip.hash, MID).spec
    spent = transfer(ALICE, BOB, 5, 0)
    _, stale = on_tip(chain, [spent], MINER.address, job, clock.now)
    extend(chain, clock, 1, txs=(spent,))
    fresh = transfer(ALICE, BOB, 5, 1)
    job = null_job(chain.tip.hash, MID).spec
    header, body = on_tip(chain, [fresh], MINER.address, job, clock.now, on_top_of=stale)
    assert body.txs == (fresh,) and body.parent == chain.tip.hash
    assert header == on_tip(chain, [fresh], MINER.address, job, clock.now)[0]
