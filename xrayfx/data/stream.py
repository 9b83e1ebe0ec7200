"""Decode image records in worker threads, in order, and the record of an input left out."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from xrayfx.data.manifest import ImageRecord
from xrayfx.exceptions import ImageDecodeError


@dataclass
class Skip:
    """An input left out of a run, and why."""

    path: str
    reason: str
    image_id: str = ""


def decoded_stream(
    records: list[ImageRecord], loader: Callable[[Path], np.ndarray], workers: int, lookahead: int
) -> Iterator[tuple[ImageRecord, np.ndarray | None, str | None]]:
    """Decode records in worker threads, yielding (record, image or None, skip reason) in order.

    Only known decode failures become skips; any other exception is a bug and propagates.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xrayfx-decode") as pool:
        pending: deque[tuple[ImageRecord, Future]] = deque()
        it = iter(records)
        for r in it:
            pending.append((r, pool.submit(loader, r.path)))
            if len(pending) >= lookahead:
                break
        while pending:
            record, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(loader, nxt.path)))
            try:
                yield record, fut.result(), None
            except ImageDecodeError as exc:
                yield record, None, exc.reason
