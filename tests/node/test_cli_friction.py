"""What got in a new user's way (issue 16, items 5 and 6), each a clear error at once."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from consensus.keys import PrivateKey
from tests.support.clikit import one_line_error, run
from tests.support.framework import NodeProcess


def _wallet(tmp_path: Path) -> str:
    path = str(tmp_path / "w.key")
    if Path(path).exists():
        return path
    assert run("wallet", "new", "--from-label", "devnet-1", "--wallet", path).exit_code == 0
    return path


def test_a_text_file_as_a_job_operand_is_named_as_not_npy(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("1 2\n3 4\n")
    np.save(tmp_path / "b.npy", np.zeros((4, 4), dtype=np.int8))
    line = one_line_error(
        run("job", "submit", "--a", str(tmp_path / "a.txt"), "--b", str(tmp_path / "b.npy"),
            "--reward", "5", "--wallet", _wallet(tmp_path)),
        "--a", "is not a .npy file", "numpy.save",
    )  # fmt: skip
    assert "pickle" not in line


def test_the_old_option_names_still_work_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("not npy")
    args = ["job", "submit", "--a", str(tmp_path / "a.txt"), "--b", str(tmp_path / "a.txt")]
    old = run(*args, "--fee", "5", "--wallet", _wallet(tmp_path))
    assert "warning: --fee is deprecated, use --reward" in old.stderr
    assert "is not a .npy file" in old.stderr  # and it went on with --fee as the reward
    both = run(*args, "--fee", "5", "--reward", "5")
    assert both.exit_code == 2 and "--fee is the old name of --reward" in both.stderr
    missing = run(*args)
    assert missing.exit_code == 2 and "Missing option '--reward'" in missing.stderr
    fetch = run("data", "fetch", "ab" * 32, "--out", "x", "--timeout", "5", "--fetch-timeout", "5")
    assert fetch.exit_code == 2 and "--timeout is the old name of --fetch-timeout" in fetch.stderr
    assert "--fee" not in run("job", "submit", "--help").stdout
    assert "--timeout" not in run("data", "fetch", "--help").stdout.replace("--fetch-timeout", "")


def test_data_pubkey_prints_one_line_usable_as_an_argument(tmp_path: Path) -> None:
    out = run("data", "pubkey", "--wallet", _wallet(tmp_path))
    assert out.exit_code == 0
    assert out.stdout == PrivateKey.from_label("devnet-1").public_key.hex() + "\n"


def test_data_register_refuses_a_bad_csv_before_anything_is_sent(tmp_path: Path) -> None:
    bad = tmp_path / "records.csv"
    bad.write_text("age,weight,label\n31,70,1\n45,n/a,0\n")
    # No node runs here: the check comes before the first RPC call.
    one_line_error(
        run("data", "register", str(bad), "--wallet", _wallet(tmp_path),
            "--datadir", str(tmp_path / "none")),
        "records.csv", "line 3, column 2", "'n/a' is not a finite number", "integer class label",
    )  # fmt: skip
    bad.write_text("age,weight,label\n31,70,yes\n")
    one_line_error(
        run("data", "register", str(bad), "--wallet", _wallet(tmp_path)), "line 2", "label"
    )


def test_a_port_in_use_names_the_option(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for option in ("--listen", "--rpc"):
            done = subprocess.run(
                [sys.executable, "-m", "node.cli", "node", "--datadir", str(tmp_path / option),
                 option, f"127.0.0.1:{port}"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 1
            errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
            assert errors == [
                f"error: {option} 127.0.0.1:{port}: the address is in use (port 0 picks a free one)"
            ], done.stderr
            assert "Errno" not in done.stderr


def test_a_plot_to_a_bad_path_fails_before_measuring(tmp_path: Path) -> None:
    started = time.monotonic()
    one_line_error(
        run("bench", "kernels", "--size", "2048", "--plot", str(tmp_path / "no" / "k.png")),
        "--plot",
        "does not exist",
    )
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(
        run("bench", "consensus", "--plot", str(blocker / "out")), "--plot", "cannot create"
    )
    assert time.monotonic() - started < 5


def test_a_wallet_without_coins_is_told_it_needs_some_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    node = NodeProcess(tmp_path / "n", [], "n").start()
    try:
        fresh = str(tmp_path / "fresh.key")
        assert run("wallet", "new", "--wallet", fresh).exit_code == 0
        data = tmp_path / "records.csv"
        data.write_text("x,label\n1,0\n2,1\n")
        line = one_line_error(
            run("data", "register", str(data), "--wallet", fresh, "--datadir", str(node.datadir)),
            "holds 0.00000000 coins", "a grantee too, needs coins", "pouw wallet send",
        )  # fmt: skip
        assert "refused" not in line
        assert node.call("getmempool")["size"] == 0
        assert node.rpc is not None
        metrics = urllib.request.urlopen(node.rpc.url.rsplit("/", 1)[0] + "/metrics").read()
        assert b'method="putdatasetchunks"' not in metrics  # nothing was uploaded
    finally:
        assert node.stop() == 0
