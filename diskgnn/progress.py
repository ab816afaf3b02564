"""Progress reporting hook: the library calls it, the CLI draws bars.

A progress function takes ``(task, advance, total)``: ``task`` names the work
("sample train/0"), ``advance`` is how many units were just finished and
``total`` the number of units of that task (known on the first call).
"""
from __future__ import annotations

from typing import Callable, Optional

ProgressFn = Callable[[str, int, Optional[int]], None]


def no_progress(task: str, advance: int, total: Optional[int] = None) -> None:
    """The default: report nothing."""
