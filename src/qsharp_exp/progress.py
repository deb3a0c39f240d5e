"""Progress bars for the long stages (on stderr, so that stdout keeps the run's summary)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(iterable=None, total: int | None = None, desc: str = "", enabled: bool = True, initial: int = 0):
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                mininterval=1.0, initial=initial)
