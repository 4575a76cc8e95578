"""Progress for long loops: a tqdm bar in terminals, or a user callback that may cancel."""

from __future__ import annotations

import logging

from tqdm.auto import tqdm

from .errors import Cancelled

log = logging.getLogger("sdcpp")


def track(items, total: int, desc: str, progress=True):
    """Yield `items`. `progress`: True (tqdm bar, hidden when not a terminal), False, or a callable
    `progress(done, total, label) -> bool | None`; returning False cancels with `sdcpp.Cancelled`."""
    if callable(progress):
        for done, item in enumerate(items):
            if progress(done, total, desc) is False:
                raise Cancelled(f"{desc}: cancelled after {done} of {total}")
            yield item
        progress(total, total, desc)
        return
    bar = tqdm(items, total=total, desc=desc, unit="tensor", disable=None if progress else True, leave=False)
    try:
        yield from bar
    finally:
        bar.close()
