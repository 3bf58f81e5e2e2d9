"""The `pouw` command line: help, one-line errors, wallets, config files,
POUW_* environment variables, and payments against a real node process."""

from __future__ import annotations

import json
import platform
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import kernels.backends
from kernels.isa import compile_target
from node.cli.main import COMMANDS
from tests.support.clikit import one_line_error, run
from tests.support.framework import NodeProcess, wait_until


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)])
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: pouw {' '.join(command)}".rstrip())


def test_wallet_rpc_job_and_market_commands_start_without_the_node_s_heavy_modules(tmp_path):
    """`pouw wallet …`, `pouw rpc …`, `pouw job …` and `pouw market …` load their own
    command only: not Numba, the kernels or aiohttp (about a second on every call before
    commands were lazy; `job` and `market` import the market client where it runs)."""
    probe = (
        "import sys\n"
        "from node.cli.main import cli\n"
        "for args in sys.argv[1:]:\n"
        "    try:\n"
        "        cli.main(args.split(), prog_name='pouw', standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('numba', 'aiohttp', 'llvmlite')]\n"
        "light = ('kernels.memory', 'kernels.params')  # a mallopt call and constants\n"
        "heavy += [m for m in sys.modules if m.startswith('kernels.') and m not in light]\n"
        "print(sorted(heavy)[:5])\n"
    )
    wallet = tmp_path / "w.key"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            probe,
            f"wallet new --wallet {wallet}",
            f"wallet address --wallet {wallet}",
            "rpc --help",
            "node --help",
            "job --help",
            "job status --help",
            "job result --help",
            "market --help",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "pw" in out.stdout and "Usage: pouw rpc" in out.stdout, out.stdout
    assert "Usage: pouw job result" in out.stdout and "Usage: pouw market" in out.stdout
    assert out.stdout.splitlines()[-1] == "[]", out.stdout


def test_help_works_in_a_real_process():
    out = subprocess.run(
        [sys.executable, "-m", "node.cli", "--help"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and "wallet" in out.stdout and not out.stderr


def test_bad_node_arguments_are_one_line_errors(tmp_path, monkeypatch):
    d = str(tmp_path / "d")
    one_line_error(run("node", "--datadir", d, "--listen", "nonsense"), "--listen", "nonsense")
    one_line_error(run("node", "--datadir", d, "--peer", "host:notaport"), "--peer", "port")
    monkeypatch.setattr(kernels.backends, "cuda_available", lambda: False)
    one_line_error(run("node", "--datadir", d, "--backend", "cuda"), "cuda", "GPU")
    one_line_error(run("node", "--config", "/nonexistent.toml"), "/nonexistent.toml", "exist")
    bad = tmp_path / "bad.toml"
    bad.write_text('listen = "127.0.0.1:0\nmine = \n')
    one_line_error(run("node", "--config", str(bad)), str(bad), "not valid TOML")
    one_line_error(run("node", "--datadir", d, "--miner-key", "/nonexistent"), "--miner-key")
    key = tmp_path / "miner.key"
    key.write_text("label:devnet-1\n")
    other = "pw" + "00" * 20
    one_line_error(
        run("node", "--datadir", d, "--miner-key", str(key), "--miner-address", other),
        "--miner-address",
        "another address",
    )
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_bad_wallet_rpc_and_bench_arguments_are_one_line_errors(tmp_path):
    one_line_error(run("wallet", "address", "--wallet", "/nonexistent"), "/nonexistent")
    w = str(tmp_path / "w.key")
    assert run("wallet", "new", "--wallet", w).exit_code == 0
    one_line_error(run("wallet", "send", "notanaddress", "5", "--wallet", w), "address")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(run("rpc", "getinfo", "--datadir", str(empty)), "no running node", str(empty))
    one_line_error(run("market", "--datadir", str(empty)), "no running node", str(empty))
    one_line_error(run("bench", "kernels", "--size", "100"), "--size", "64")


BENCH_KERNELS = [sys.executable, "-m", "node.cli", "bench", "kernels"]


def test_bench_kernels_reports_the_instruction_set_it_ran_with():
    """Figures from different machines can be told apart: the record names the target ISA."""
    run_ = subprocess.run(
        [*BENCH_KERNELS, "--size", "128", "--repeats", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run_.returncode == 0, run_.stderr
    record = json.loads(run_.stdout)
    target = compile_target()
    assert record["backend"] == "cpu"
    assert record["isa"] == target.isa and record["cpu"] == target.cpu
    assert record["attempt_s"] > 0 and record["plain_s"] > 0 and record["m"] == 128
    # `pouw` keeps freed memory mapped where the C library is glibc (kernels/memory.py).
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert record["freed_memory_kept"] is glibc


def test_wallet_new_and_address_agree_and_new_never_overwrites(tmp_path):
    w = tmp_path / "wallet.key"
    created = run("wallet", "new", "--wallet", str(w), "--json")
    assert created.exit_code == 0, created.output
    address = json.loads(created.stdout)["address"]
    shown = run("wallet", "address", "--wallet", str(w), "--json")
    assert json.loads(shown.stdout) == {"address": address}
    assert stat.S_IMODE(w.stat().st_mode) == 0o600
    seed = w.read_text()
    one_line_error(run("wallet", "new", "--wallet", str(w)), "already exists", "--force")
    assert w.read_text() == seed
    replaced = run("wallet", "new", "--wallet", str(w), "--force", "--json")
    assert replaced.exit_code == 0 and json.loads(replaced.stdout)["address"] != address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_levels(datadir: Path) -> set[str]:
    """The levels of the records in the node's log file."""
    lines = (datadir / "node.log").read_text().splitlines()
    return {line.split()[2] for line in lines if len(line.split()) > 2}


def test_a_config_file_and_pouw_environment_variables_set_node_options(tmp_path, monkeypatch):
    rpc_port = _free_port()
    config = tmp_path / "pouw.toml"
    config.write_text(f'listen = "127.0.0.1:0"\nrpc = "127.0.0.1:{rpc_port}"\nlog_level = "INFO"\n')
    monkeypatch.setenv("POUW_NODE_LOG_LEVEL", "WARNING")  # the environment outranks the file
    node = NodeProcess(tmp_path / "n", ["--config", str(config)], "configured").start()
    try:
        info = json.loads((tmp_path / "n" / "node.json").read_text())
        assert info["rpc"] == f"127.0.0.1:{rpc_port}", "rpc from the config file was ignored"
        assert info["p2p"].startswith("127.0.0.1:")
        got = run("rpc", "getinfo", "--datadir", str(tmp_path / "n"))
        assert got.exit_code == 0 and json.loads(got.stdout)["network"] == "devnet"
        assert "INFO" not in _log_levels(tmp_path / "n"), "POUW_NODE_LOG_LEVEL was ignored"
    finally:
        assert node.stop() == 0, node.log_tail()
    assert not (tmp_path / "n" / "node.json").exists(), "the node did not finish stopping"


def test_config_file_values_are_checked_like_flags(tmp_path):
    config = tmp_path / "pouw.toml"
    config.write_text('log_level = "WARNING"\nlisten = "nonsense"\n')
    one_line_error(run("node", "--config", str(config)), "--listen", "nonsense")
    config.write_text('log_level = "WARNING"\nlisen = "127.0.0.1:0"\n')
    one_line_error(run("node", "--config", str(config)), "unknown option", "lisen")
    env = {"POUW_NODE_LISTEN": "nonsense"}
    one_line_error(run("node", "--datadir", str(tmp_path / "x"), env=env), "--listen", "nonsense")


def test_wallet_send_confirms_and_balance_shows_it(tmp_path):
    d = tmp_path / "miner"
    node = NodeProcess(
        d, ["--mine", "--threads", "1", "--devnet-block-time-ms", "200"], "miner"
    ).start()
    try:
        payer, payee = str(tmp_path / "payer.key"), str(tmp_path / "payee.key")
        assert run("wallet", "new", "--from-label", "devnet-0", "--wallet", payer).exit_code == 0
        addr = json.loads(run("wallet", "new", "--wallet", payee, "--json").stdout)["address"]
        sent = run("wallet", "send", addr, "12.5", "--wallet", payer, "--datadir", str(d), "--json")
        assert sent.exit_code == 0, sent.output
        txid = json.loads(sent.stdout)["txid"]
        assert len(bytes.fromhex(txid)) == 32

        def confirmations() -> int:
            got = run("rpc", "gettransaction", txid, "--datadir", str(d))
            assert got.exit_code == 0, got.output
            return int(json.loads(got.stdout)["confirmations"])

        wait_until(lambda: confirmations() >= 1, 45, "the transfer to confirm")
        balance = run("wallet", "balance", "--address", addr, "--datadir", str(d), "--json")
        assert balance.exit_code == 0, balance.output
        assert json.loads(balance.stdout)["balance"] == "12.50000000"  # coins, 8 decimals
        base = run("wallet", "balance", "--address", addr, "--datadir", str(d), "--base-units")
        assert base.stdout.startswith("1250000000 base units (nonce 0"), base.stdout
        mine = run("wallet", "address", "--wallet", payee, "--json")
        assert json.loads(mine.stdout)["address"] == addr
    finally:
        assert node.stop() == 0, node.log_tail()


def test_bad_train_and_data_arguments_are_one_line_errors(tmp_path):
    one_line_error(run("train", "--dataset", "mnist"), "'mnist'", "breast_cancer", "64 hex")
    dataset_id = "ab" * 32
    one_line_error(
        run("train", "--dataset", dataset_id, "--reward", "5", "--job-timeout", "9"),
        "--reward, --job-timeout",
        "built-in dataset",
    )
    one_line_error(
        run("train", "--dataset", "digits", "--no-publish", "--host", "127.0.0.1:1"),
        "--host, --no-publish",
        "on-chain dataset id",
    )
    # Too many chunks is refused before anything is encrypted or sent, with the fix.
    big = tmp_path / "table.csv"
    big.write_bytes(b"x" * 5000)
    one_line_error(
        run("data", "register", str(big), "--chunk-size", "1"),
        "5000 chunks",
        "4096",
        "chunk size of at least 2",
    )


def test_node_log_rolls_over_instead_of_growing_without_bound(tmp_path, monkeypatch):
    """node.log is cut at LOG_FILE_BYTES into node.log.1 … node.log.3: a flood of log
    lines (a hostile client's, say) fills at most four files."""
    import logging

    from node.cli import node as node_cli

    monkeypatch.setattr(node_cli, "LOG_FILE_BYTES", 4096)
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        node_cli._setup_logging(tmp_path, "info")
        for i in range(2000):
            logging.getLogger("pouw.test").info("line %d of a flood", i)
    finally:
        for handler in root.handlers[len(before) :]:
            handler.close()
        root.handlers[:] = before
        root.setLevel(level)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["node.log", "node.log.1", "node.log.2", "node.log.3"], files
    assert all((tmp_path / f).stat().st_size <= 4096 for f in files)
    assert "line 1999 of a flood" in (tmp_path / "node.log").read_text()
