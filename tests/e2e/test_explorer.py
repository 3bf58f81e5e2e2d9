"""The block explorer in a real browser (Debian's Chromium driven by Playwright) against
a real 2-node devnet with transfers, a posted and mined job and a dataset read once.

Every page is loaded, checked against the RPC and saved as a screenshot under
``out/explorer/`` (the test's artifacts).
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consensus.datashare import owned_id
from consensus.keys import PrivateKey, address_to_text
from consensus.params import COIN, DEVNET, with_block_time
from consensus.transactions import JobPostPayload, ModelRecordPayload, TransferPayload
from node.client.datashare import DataClient
from node.client.market import MarketClient
from tests.support.framework import NodeProcess, wait_until

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "out" / "explorer"
BLOCK_MS = 400
PARAMS = with_block_time(DEVNET, BLOCK_MS)
HOSPITAL = PrivateKey.from_label("devnet-0")
RESEARCHER = PrivateKey.from_label("devnet-1")
PAYER = PrivateKey.from_label("devnet-2")
POSTER = PrivateKey.from_label("devnet-3")
RECIPIENT = PrivateKey.from_label("explorer-recipient")
HOSTILE_NAME = "records <img src=x onerror='window.pwned=1'>"
"""Metadata is anyone's text: the explorer must show it, never run it."""
OPEN_JOB_FEE = 6_710_886
WAIT_S = 60.0
UI_MS = 15_000


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A mining node and a user node (whose explorer the tests browse), with three
    transfers, a job posted and mined, a model trained on it, an open job, and a dataset
    granted, read once, a model published from the read, and the grant revoked."""
    root = tmp_path_factory.mktemp("explorer")
    common = ["--devnet-block-time-ms", str(BLOCK_MS), "--threads", "1"]
    nodes: list[NodeProcess] = []
    try:
        miner = NodeProcess(root / "miner", [*common, "--mine"], "miner").start()
        nodes.append(miner)
        user = NodeProcess(root / "user", [*common, "--peer", miner.p2p], "user").start()
        nodes.append(user)
        wait_until(lambda: user.call("getpeers"), 30, "the user node's peer")
        yield {"miner": miner, "user": user, **_populate(user, root)}
    finally:
        for node in nodes:
            node.kill()


def _populate(user: NodeProcess, root: Path) -> dict[str, Any]:
    assert user.rpc is not None
    rpc = user.rpc
    payer = DataClient(rpc, PAYER, PARAMS, root / "payer")
    hospital = DataClient(rpc, HOSPITAL, PARAMS, root / "hospital")
    researcher = DataClient(rpc, RESEARCHER, PARAMS, root / "researcher")
    transfers = [payer.send(TransferPayload(RECIPIENT.address, 1_000 + i)) for i in range(3)]
    rng = np.random.default_rng(17)
    a = rng.integers(-64, 64, (64, 128), dtype=np.int8)
    b = rng.integers(-64, 64, (128, 32), dtype=np.int8)
    market = MarketClient(rpc, POSTER, PARAMS)
    job = market.submit(a, b, reward=50_000)
    data = b"age,label\n" + b"".join(f"{i % 90},{i % 2}\n".encode() for i in range(400))
    reg = hospital.register(data, json.dumps({"name": HOSTILE_NAME}), 1024)
    dataset_id = bytes.fromhex(reg["dataset_id"])
    hospital.wait_confirmed(reg["txid"], WAIT_S)
    grant = hospital.grant(dataset_id, RESEARCHER.public_key.data, 1_000)
    hospital.wait_confirmed(grant["txid"], WAIT_S)
    got, read = researcher.fetch(dataset_id, user.p2p, WAIT_S)
    assert got == data
    claimed = market.wait(job.job_id, timeout=WAIT_S)
    # A training step citing the mined job, a model published from the read, and a job
    # nobody can mine (its operands were never uploaded), which stays open.
    poster = DataClient(rpc, POSTER, PARAMS, root / "poster")
    model_id = owned_id(POSTER.address, bytes(range(32)))  # POSTER records it
    record = ModelRecordPayload(model_id, 0, (job.job_id,), b"\x11" * 32, bytes(32), "digits")
    published = researcher.publish_model(
        dataset_id, b"\x22" * 32, bytes.fromhex(read["request_nonce"])
    )
    m, k, n = PARAMS.null_job_shape
    unmineable = JobPostPayload(m, k, n, b"\x33" * 32, b"\x44" * 32, OPEN_JOB_FEE, 10_000)
    waits = [poster.send(record), poster.send(unmineable), published["txid"]]
    for txid in waits:
        poster.wait_confirmed(txid, WAIT_S)
    revoke = hospital.revoke(dataset_id, RESEARCHER.address)
    hospital.wait_confirmed(revoke["txid"], WAIT_S)
    # The three are sent back to back, yet a block may be mined between two of them: the
    # page checked is the last one's block, with whichever of them it holds.
    heights = [payer.wait_confirmed(txid, WAIT_S) for txid in transfers]
    transfer_height = heights[-1]
    return {
        "model_id": model_id.hex(),
        "published_model": published["model_id"],
        "transfers": transfers,
        "transfers_in_block": [
            t for t, h in zip(transfers, heights, strict=True) if h == transfer_height
        ],
        "transfer_block": user.call("getblockbyheight", transfer_height, False)["hash"],
        "job_id": job.job_id.hex(),
        "job_block": _block_on(user, claimed),
        "claim_kind": claimed["claim_kind"],
        "claim_id": claimed["claim_id"],
        "dataset_id": reg["dataset_id"],
        "read_nonce": read["request_nonce"],
        "read_txid": read["access_log_txid"],
    }


def _block_on(node: NodeProcess, job: dict[str, Any]) -> str:
    """The block that delivered ``job``'s result: the block mined on it when its header
    claimed it, else the block holding the job_result that claimed it."""
    if job["claim_kind"] == "block":
        return str(job["claim_id"])
    return str(node.call("getblockbyheight", job["claim_height"], False)["hash"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (as root: apt-get install -y "
            "chromium), which 'make test' does"
        )
    from playwright.sync_api import sync_playwright

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, devnet: dict[str, Any]) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.on("websocket", lambda ws: requests.append(ws.url))
    page.set_default_timeout(UI_MS)
    base = _explorer(devnet["user"])
    page.goto(base)
    yield page
    page.close()
    assert not errors, f"the page raised: {errors}"
    # Works offline: everything comes from the node itself (no CDN, no fonts, no beacons).
    own = (base, "ws" + base.removeprefix("http"), "data:")
    assert requests and all(url.startswith(own) for url in requests), requests


def _explorer(node: NodeProcess) -> str:
    url: str = json.loads((node.datadir / "node.json").read_text())["explorer"]
    return url


def _open(page: Any, route: str, ready: str) -> None:
    """Show ``#/route`` in the page (the explorer is loaded) and wait for ``ready``."""
    page.evaluate("route => { location.hash = '#/' + route; }", route)
    _wait_shown(page, ready)


# The previous page stays in view while the next one loads: ``ready`` alone may be found
# in it (two block pages both have #proof). The explorer marks the route it has rendered.
_SHOWN = """ready => {
    const view = document.getElementById("view");
    return view.dataset.shown === location.hash && !view.classList.contains("loading")
        && view.querySelector(ready) !== null;
}"""


def _wait_shown(page: Any, ready: str) -> None:
    """Wait until the view shows the route in the address bar, rendered, with ``ready``."""
    page.wait_for_function(_SHOWN, arg=ready)


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _DIRECT.open(request, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_every_node_prints_and_serves_its_explorer(devnet):
    user = devnet["user"]
    url = _explorer(user)
    assert url == f"http://{json.loads((user.datadir / 'node.json').read_text())['rpc']}/"
    assert f"explorer: {url}" in user.log_tail(200)
    status, body = _get(url)
    assert status == 200 and b"explorer.js" in body
    for asset in ("explorer.js", "explorer.css"):
        status, body = _get(f"{url}explorer/static/{asset}")
        assert status == 200 and len(body) > 1000


def test_home_shows_the_tip_and_new_blocks_arrive_without_reload(devnet, page):
    user = devnet["user"]
    _open(page, "", "#tip-height")
    page.evaluate("window.loadedOnce = true")
    shown = wait_until(
        lambda: int(page.inner_text("#tip-height").replace(",", "")) == user.height(),
        UI_MS / 1000,
        "the home page's height to be getinfo's",
    )
    assert shown
    newest = max(
        int(h)
        for h in page.eval_on_selector_all(
            "#live-blocks li", "items => items.map(i => i.dataset.height)"
        )
    )
    page.wait_for_selector(f'#live-blocks li[data-height="{newest + 1}"]')
    assert page.evaluate("window.loadedOnce") is True  # no reload brought it
    for chart in ("#chart-interval", "#chart-hashrate", "#chart-useful"):
        assert page.locator(f"{chart} polyline").count() >= 1
    _shot(page, "home")


def test_the_mined_job_counts_as_useful_work(devnet):
    user = devnet["user"]
    status, body = _get(f"{_explorer(user)}explorer/api/summary?blocks=1000")
    assert status == 200
    summary = json.loads(body)
    # The block that delivered the job's result (by its header or a job_result)
    # counts the job's m·k·n as useful MACs; null-job blocks deliver nothing.
    delivered = {r["hash"]: r["useful_macs"] for r in summary["series"] if r["useful_macs"]}
    m, k, n = PARAMS.null_job_shape  # the posted job was padded to the minimum shape
    assert delivered.get(devnet["job_block"]) == m * k * n
    assert len(delivered) < len(summary["series"])
    assert 0 < summary["window"]["useful_share"] < 1


def test_block_page_shows_getblocks_transactions_and_the_proof(devnet, page):
    user = devnet["user"]
    block_hash = devnet["transfer_block"]
    _open(page, f"block/{block_hash}", "#block-txs")
    shown = page.eval_on_selector_all(
        "#block-txs tbody tr", "rows => rows.map(r => r.dataset.txid)"
    )
    assert shown == [t["txid"] for t in user.call("getblock", block_hash)["txs"]]
    assert set(devnet["transfers_in_block"]) <= set(shown)
    assert page.inner_text('#proof [data-field="tile"]').startswith("(")
    assert "of the threshold" in page.inner_text(".gauge-box")
    _shot(page, "block")
    _open(page, f"block/{devnet['job_block']}", "#proof")
    if devnet["claim_kind"] == "block":  # the job won this block: its proof ran on it
        assert "posted job" in page.inner_text('#proof [data-field="job"]')
        assert page.locator(f'#proof a[title="{devnet["job_id"]}"]').count() == 1
    else:  # the attempt won nothing: a job_result in this block delivered it
        claim_row = page.locator(f'#block-txs tbody tr[data-txid="{devnet["claim_id"]}"]')
        assert "job_result" in claim_row.inner_text()
    _shot(page, "block-on-job")


def test_transaction_and_account_pages(devnet, page):
    user = devnet["user"]
    txid = devnet["transfers"][0]
    _open(page, f"tx/{txid}", '[data-field="txid"]')
    assert page.get_attribute('[data-field="txid"] a', "title") == txid
    assert page.inner_text('[data-field="amount"]') == "0.00001000"  # 1,000 base units
    assert "null" not in page.inner_text("main").split()
    _shot(page, "transaction")
    address = address_to_text(RECIPIENT.address)
    _open(page, f"account/{address}", "#account-history")
    balance = user.call("getaccount", address)["balance"]
    assert page.inner_text("#balance") == f"{balance // COIN:,}.{balance % COIN:08d}"  # coins
    history = page.eval_on_selector_all(
        "#account-history td a[title]", "links => links.map(a => a.title)"
    )
    assert set(devnet["transfers"]) <= set(history)
    _shot(page, "account")


def test_market_page_shows_the_job_and_its_claim(devnet, page):
    user = devnet["user"]
    job_id = devnet["job_id"]
    _open(page, "market", "#market-activity")
    listed = page.locator(f'[id^="jobs-"] a[title="{job_id}"]')
    assert listed.count() == 1
    table = listed.evaluate("a => a.closest('table').id")
    assert table in ("jobs-mined", "jobs-paid"), table
    row = page.locator(f'#{table} tbody tr:has(a[title="{job_id}"])')
    assert row.locator('[data-field="reward"]').inner_text() == "0.00050000"  # 50,000 units
    assert user.call("getjob", job_id)["status"] in ("mined", "paid")
    assert page.locator("#market-activity .tag.job_post").count() >= 2
    assert page.locator("#market-activity .tag.model_record").count() == 1
    m, k, n = PARAMS.null_job_shape
    open_rows = page.locator("#jobs-open tbody tr")
    assert open_rows.count() == 1
    per_gmac = round(OPEN_JOB_FEE * 1e9 / (m * k * n))  # base units per GMAC, in coins:
    assert f"{per_gmac // COIN}.{per_gmac % COIN:08d}" in open_rows.inner_text()
    lineage = page.locator(f'.lineage:has(a[title="{devnet["model_id"]}"])')
    assert lineage.locator(f'a[title="{job_id}"]').count() == 1  # step 0 cites the mined job
    _shot(page, "market")
    _open(page, f"model/{devnet['model_id']}", "#model-steps")
    assert page.locator(f'#model-steps a[title="{job_id}"]').count() == 1
    _shot(page, "model")
    _open(page, f"job/{job_id}", '[data-field="status"]')
    # The claim links to what made it: the job's block, or its job_result transaction.
    assert page.locator(f'a[title="{devnet["claim_id"]}"]').count() == 1
    _shot(page, "job")


def test_dataset_pages_list_the_logged_read(devnet, page):
    dataset_id = devnet["dataset_id"]
    _open(page, "datasets", "#datasets")
    assert page.locator(f'#datasets a[title="{dataset_id}"]').count() == 1
    assert HOSTILE_NAME in page.inner_text("#datasets")  # shown as text
    assert page.locator("#datasets img").count() == 0
    assert page.evaluate("window.pwned") is None
    _shot(page, "datasets")
    _open(page, f"dataset/{dataset_id}", "#dataset-reads")
    read = page.locator(f'#dataset-reads tr[data-nonce="{devnet["read_nonce"]}"]')
    assert read.count() == 1
    assert "chunks at height" in read.inner_text()  # served by this node, from its read log
    assert read.locator(f'a[title="{address_to_text(RESEARCHER.address)}"]').count() == 1
    researcher = address_to_text(RESEARCHER.address)
    grant = page.locator(f'#dataset-grants tr:has(a[title="{researcher}"])')
    assert grant.locator('[data-field="live"]').inner_text() == "no"  # revoked
    assert page.locator(f'#dataset-revokes a[title="{researcher}"]').count() == 1
    published = page.locator(f'#dataset-models a[title="{devnet["published_model"]}"]')
    assert published.count() == 1
    _shot(page, "dataset")
    published.click()  # the model's provenance: the dataset and the read it came from
    page.wait_for_selector("#model-published")
    assert page.locator(f'#model-published a[title="{dataset_id}"]').count() == 1
    assert devnet["read_nonce"][:16] in page.inner_text("#model-published")
    _shot(page, "published-model")


def test_peers_page(devnet, page):
    user = devnet["user"]
    _open(page, "peers", "#peers")
    rows = page.locator("#peers tbody tr")
    peers = user.call("getpeers")
    assert rows.count() == len(peers) >= 1
    assert "outbound" in page.inner_text("#peers tbody")  # it dialled the miner
    assert peers[0]["address"] in page.inner_text("#peers tbody")
    assert "latency" in page.inner_text("#peers thead").lower()
    _shot(page, "peers")


def test_search_box_finds_each_kind_of_id(devnet, page):
    _open(page, "", "#tip-height")
    for query, route in [
        ("3", "block/3"),
        (devnet["transfer_block"], f"block/{devnet['transfer_block']}"),
        (devnet["transfers"][1], f"tx/{devnet['transfers'][1]}"),
        (address_to_text(RECIPIENT.address), f"account/{address_to_text(RECIPIENT.address)}"),
        (devnet["job_id"], f"job/{devnet['job_id']}"),
        (devnet["dataset_id"], f"dataset/{devnet['dataset_id']}"),
        (devnet["model_id"], f"model/{devnet['model_id']}"),
        (devnet["published_model"], f"model/{devnet['published_model']}"),
    ]:
        page.fill("#search-input", query)
        page.press("#search-input", "Enter")
        page.wait_for_function(f"location.hash === '#/{route}'")
        _wait_shown(page, "h1")
        assert page.locator("#not-found").count() == 0, query


def test_bad_ids_show_not_found_and_never_a_traceback(devnet, page):
    base = _explorer(devnet["user"])
    for route in [
        "block/zz",
        f"block/{'0' * 64}",
        "block/99999999",
        "tx/abc",
        f"account/{'pw' + 'g' * 40}",
        f"dataset/{'ab' * 32}",
        f"job/{'cd' * 32}",
        "nowhere",
        f"search/{'x' * 30}",
    ]:
        _open(page, route, "#not-found")
        text = page.inner_text("#not-found")
        assert text.startswith("Not found") and "Traceback" not in text, route
    _shot(page, "not-found")
    for path, code in [
        (f"block/{'0' * 64}", 404),
        ("block/zz", 400),
        ("tx/abc", 400),
        (f"dataset/{'ab' * 32}", 404),
        ("summary?blocks=nine", 400),
        ("block/%C2%B2", 400),  # '²' is a digit to Python's isdigit, not to int
        ("search?q=%C2%B2", 400),
        ("summary?blocks=%C2%B2", 400),
        ("nowhere", 404),
    ]:
        status, body = _get(f"{base}explorer/api/{path}")
        assert status == code, path
        assert "error" in json.loads(body) and b"Traceback" not in body


def test_explorer_needs_no_token_and_refuses_foreign_host_and_origin(devnet):
    base = _explorer(devnet["user"])
    own = base.rstrip("/")
    for path in ("", "explorer/static/explorer.js", "explorer/api/summary", "explorer/api/peers"):
        assert _get(base + path)[0] == 200, path  # no Authorization header
        assert _get(base + path, {"Origin": own})[0] == 200, path
        status, body = _get(base + path, {"Host": "evil.example"})
        assert status == 403 and b"Host" in body, path
        status, body = _get(base + path, {"Origin": "http://evil.example"})
        assert status == 403 and b"Origin" in body, path
    # The live feed the home page reads: a foreign page cannot subscribe to it either.
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
    assert _get(base + "ws", {**upgrade, "Origin": "http://evil.example"})[0] == 403
    assert _get(base + "ws", {**upgrade, "Host": "evil.example"})[0] == 403
