"""A progress bar for a node that is catching up (headers-first sync).

Drawn with rich on stderr when it is a terminal (``pouw node`` decides); in
every case the node keeps the numbers (``state()``), so RPC, tests and logs can
see how far a sync has come.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

MIN_BLOCKS_FOR_BAR = 50  # a few new blocks are gossip, not a catch-up


class SyncProgress:
    def __init__(self, draw: bool) -> None:
        self.draw = draw
        self.start_height = 0
        self.target = 0
        self.height = 0
        self.started_at: float | None = None
        self._bar: Progress | None = None
        self._task: Any = None
        self.bars_drawn = 0

    def update(self, height: int, target: int) -> None:
        """The node is at ``height`` and knows headers up to ``target``."""
        if target > self.target:
            if self.started_at is None:
                self.start_height, self.started_at = height, time.monotonic()
            self.target = target
        self.height = height
        if self.draw and self.started_at is not None:
            if self._bar is None and self.target - self.start_height >= MIN_BLOCKS_FOR_BAR:
                self._bar = Progress(
                    TextColumn("sync"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]:.0f} blocks/s"),
                    TimeRemainingColumn(),
                    console=Console(stderr=True),
                    transient=True,
                )
                self._bar.start()
                self.bars_drawn += 1
                self._task = self._bar.add_task("sync", total=self.target, rate=0.0)
            if self._bar is not None:
                self._bar.update(self._task, completed=height, total=self.target, rate=self.rate())
        if height >= self.target:
            self.finish()

    def retarget(self, height: int, target: int) -> None:
        """The headers past ``target`` were dropped (their peer left, or a block failed)."""
        self.height = height
        self.target = target
        if height >= target:
            self.finish()

    def rate(self) -> float:
        if self.started_at is None:
            return 0.0
        elapsed = time.monotonic() - self.started_at
        return (self.height - self.start_height) / elapsed if elapsed > 0 else 0.0

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self.started_at = None

    def state(self) -> dict[str, Any]:
        return {
            "syncing": self.started_at is not None and self.height < self.target,
            "height": self.height,
            "target": self.target,
            "blocks_per_s": round(self.rate(), 1),
        }
