"""Writing a directory as a whole: readers see the old one or the new one, never half of either."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def write_directory(target: Path, fill: Callable[[Path], T]) -> T:
    """Call ``fill`` on a fresh folder beside ``target``, then put it in ``target``'s place.

    An existing ``target`` is moved aside first and removed only once the new one is in place, so a
    crash at any point leaves a complete directory (the old or the new one). ``fill``'s result is
    returned; if it raises, the partial folder is removed and ``target`` is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        result = fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return result
