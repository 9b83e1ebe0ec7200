"""One progress bar for every long run over images: count, images/s, ETA (and batches, when given)."""

from __future__ import annotations

import time
from typing import Any


class ImageProgress:
    """A rich progress bar of images with their rate and ETA, or nothing when disabled.

    ``batches`` adds a "done/total batches" column (the Dask path counts batches).
    """

    def __init__(self, enabled: bool, total: int, label: str, batches: int | None = None):
        self.enabled = enabled and total > 0
        self.total = total
        self.label = label
        self.total_batches = batches
        self.images = 0
        self.batches = 0

    def __enter__(self) -> "ImageProgress":
        self.t0 = time.perf_counter()
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            columns = [TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn()]
            if self.total_batches is not None:
                columns.append(TextColumn("{task.fields[batches]}", markup=False))
            columns += [TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn()]
            self.bar = Progress(*columns)
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=self.total, rate="", batches=self._batches_text())
        return self

    def _batches_text(self) -> str:
        return f"{self.batches}/{self.total_batches} batches" if self.total_batches is not None else ""

    def advance(self, n_images: int, batches: int = 0) -> None:
        """Count ``n_images`` more images (and ``batches`` finished batches)."""
        self.images += n_images
        self.batches += batches
        if self.enabled:
            rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, advance=n_images, rate=f"{rate:.1f} img/s", batches=self._batches_text())

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.stop()
