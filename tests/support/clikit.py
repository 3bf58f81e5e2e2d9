"""The `pouw` command line run in-process, and what a clean failure of it looks like."""

from __future__ import annotations

from click.testing import CliRunner, Result

from node.cli.main import cli


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """`pouw ARGS` in-process, with POUW_* environment variables read as the CLI reads them."""
    return CliRunner().invoke(cli, list(args), env=env, prog_name="pouw", auto_envvar_prefix="POUW")


def one_line_error(result: Result, *words: str) -> str:
    """Assert a clean failure: non-zero exit, one stderr line naming the problem."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    line = lines[0]
    assert line.startswith(("error:", "Error:")), line
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    return line
