"""Peak memory of a block of work, as the task scores report it."""

from __future__ import annotations

import time

import numpy as np

from opencellplm._memory import PeakMemory


def test_peak_memory_sees_a_short_lived_allocation():
    with PeakMemory() as peak:
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        time.sleep(0.1)  # long enough for a few readings
        del block
    assert peak.kind in ("rss", "maxrss")
    if peak.kind == "rss":
        assert 150 < peak.mb < 400
    with PeakMemory() as quiet:
        pass
    assert quiet.mb < 50
