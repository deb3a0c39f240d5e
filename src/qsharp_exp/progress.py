"""Progress of the long stages: bars (on stderr, so that stdout keeps the run's summary) and the live log that a
loop sends its curve to."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm.auto import tqdm


def progress(iterable=None, total: int | None = None, desc: str = "", enabled: bool = True, initial: int = 0):
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                mininterval=1.0, initial=initial)


LiveLog = Callable[[dict], None]  # where a loop sends each point of its curve as it is measured (tracking.Tracker)


def ignore_point(point: dict) -> None:
    """The live log of a loop that nothing tracks."""
