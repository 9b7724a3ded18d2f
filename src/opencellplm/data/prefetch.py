"""The next items of an iterator built on a background thread, while the caller works on the current one.

On a GPU, a cell set's host work (reading its rows and genes, building its input tensors) otherwise waits for
the previous set's forward and the forward for it: with a thread building set ``i + 1`` while the device runs set
``i``, the two overlap (numpy, scipy and torch release the GIL in their heavy loops).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()
_POLL_S = 0.1  # how often a blocked producer checks whether the consumer has gone


def prefetched(items: Iterable[T], ahead: int = 1) -> Iterator[T]:
    """The items of ``items`` in order, each built up to ``ahead`` items before it is asked for.

    An exception raised while building an item is raised here, where that item would have come. Closing the
    returned iterator early (``break``, an exception in the caller, garbage collection) stops the thread.
    """
    if ahead < 1:
        raise ValueError(f"ahead must be at least 1, got {ahead}")
    ready: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, _END))
        except BaseException as err:  # handed to the consumer, raised there
            put((False, err))

    thread = threading.Thread(target=produce, name="opencellplm-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = ready.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()
