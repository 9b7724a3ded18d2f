"""Peak memory of a block of work: resident memory sampled in a thread (CPU), or torch's peak (CUDA)."""

from __future__ import annotations

import os
import resource
import sys
import threading
from types import TracebackType

import torch

#: Seconds between two readings of the resident memory.
SAMPLE_EVERY = 0.02


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.mb``: how far memory rose above its level at the start.

    On CUDA it is ``torch.cuda.max_memory_allocated`` above the allocation at the start (``kind == "cuda"``). On
    the CPU it is the process's resident memory, read every :data:`SAMPLE_EVERY` s from ``/proc`` (``kind ==
    "rss"``); where ``/proc`` is absent, the rise of the lifetime peak ``ru_maxrss`` (``kind == "maxrss"``, 0
    when an earlier peak was higher). Other threads' allocations count too; short spikes between readings
    can be missed.
    """

    def __init__(self, device: str | torch.device | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.mb = 0.0
        self.kind = "cuda" if self.device.type == "cuda" else ("rss" if _resident_bytes() is not None else "maxrss")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.kind == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self.kind == "rss":
            self._start = self._peak = _resident_bytes() or 0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self._start = _maxrss_bytes()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self._peak = max(self._peak, _resident_bytes() or 0)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.kind == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.kind == "rss":
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            peak = max(self._peak, _resident_bytes() or 0)
        else:
            peak = _maxrss_bytes()
        self.mb = round(max(0, peak - self._start) / 2**20, 1)


def _maxrss_bytes() -> int:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024
