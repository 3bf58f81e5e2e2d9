"""One node per datadir: an exclusive lock on ``<datadir>/.lock``, held for the process's life.

Two nodes on one datadir would share its node id, chain database, cookie and
node.json; the second to exit would delete the first's node.json. The lock is
an ``fcntl.flock`` on an open file, so the kernel releases it when the process
ends, however it ends: a stale ``.lock`` left by a crash never blocks a start.
The file holds the holder's pid, for the error message of the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path

LOCK_NAME = ".lock"
COOKIE_NAME = ".cookie"


class DatadirInUse(Exception):
    """Another process holds the datadir's lock."""

    def __init__(self, datadir: Path, pid: str) -> None:
        self.datadir = datadir
        self.pid = pid
        super().__init__(f"datadir {datadir} is in use by another node (pid {pid})")


class DatadirLock:
    """The exclusive lock on one datadir; ``acquire`` it before touching any other file."""

    def __init__(self, datadir: Path) -> None:
        self.datadir = datadir
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DatadirLock:
        """Take the lock (creating the datadir if need be); raise DatadirInUse if taken."""
        if self._fd is not None:
            return self
        self.datadir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.datadir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DatadirInUse(self.datadir, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Let the lock go (the file stays: removing it could race with the next holder)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def write_cookie(datadir: Path) -> str:
    """A fresh random token in ``<datadir>/.cookie``, readable by the owner only."""
    token = secrets.token_hex(32)
    path = datadir / COOKIE_NAME
    path.write_text(token)
    path.chmod(0o600)
    return token


def read_cookie(datadir: Path) -> str:
    path = datadir / COOKIE_NAME
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise ValueError(
            f"no RPC cookie at {path}: is the node running with that datadir?"
        ) from None
