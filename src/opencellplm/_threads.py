"""CPU threads: one count for torch and for numba, kept through scanpy's neighbours and UMAP.

Why numba too: scanpy's ``pp.neighbors`` and ``tl.umap`` run numba code (pynndescent, umap-learn) whose OpenMP
pool starts at the first parallel call with ``NUMBA_NUM_THREADS`` threads (default: every CPU, whatever
``OMP_NUM_THREADS`` says), and starting it sets the OpenMP thread count that torch shares: after
``torch.set_num_threads(1)`` and ``sc.pp.neighbors``, ``torch.get_num_threads()`` read 2 on a 2-CPU machine.
Giving numba the same count makes that reset harmless; a count set after the pool started sticks.

Why the default leaves one CPU free: a torch operation splits its work into one part per thread and waits for
the slowest part, so a thread whose core is busy with anything else (another process, the operating system)
stalls every operation. Measured on a 2-CPU machine with other work running: 30 annotator fine-tuning steps
on pbmc68k_reduced took 6 s with 1 thread and 44 s with 2 (a fresh clone saw the demo take 37 s vs 329 s).
One thread fewer costs at most 1/N of the speed on an idle N-CPU machine.

Results at a fixed thread count are reproducible bit for bit on CPU; inference (embeddings) is identical at
1 and 2 threads. Fine-tuning moves slightly with the thread count, and ``torch.use_deterministic_algorithms``
changes nothing on CPU (measured: identical results with and without it). The main cause: LayerNorm's fused
backward sums its weight and bias gradients in one chunk per thread (the encoder's other gradients are
identical at 1 and 2 threads). Measured on pbmc68k_reduced, 30 annotator steps from cellplm-small, 1 vs 2
threads: class probabilities differ by at most 0.005, the predicted labels and test macro F1 not at all, the
validation macro F1 at step 30 by 0.036 (0.485 vs 0.521); the demo saw 0.630 vs 0.651 test macro F1.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

#: torch's own choice before this package changed it: the physical cores, or OMP_NUM_THREADS when set.
_TORCH_DEFAULT = torch.get_num_threads()


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set, else one thread fewer than the cores (torch's count, at most the CPUs
    available), at least 1."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) >= 1:
        return int(value)
    return max(1, min(_TORCH_DEFAULT, available_cpus()) - 1)


def set_threads(n: int | None = None) -> int:
    """Run torch and numba on ``n`` CPU threads (default :func:`default_threads`); returns ``n``.

    Call it before the work; the count holds through ``scanpy.pp.neighbors`` / ``tl.umap``, which would
    otherwise reset torch's to the number of CPUs.
    """
    if n is None:
        n = default_threads()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads={n!r}: give a whole number of at least 1")
    numba = sys.modules.get("numba")  # numba comes with scanpy; only an imported one needs telling
    if numba is not None:
        # starts numba's pool now (if not yet started), so that its reset of the OpenMP count comes before ours
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    else:
        os.environ["NUMBA_NUM_THREADS"] = str(n)  # read when numba is imported
    torch.set_num_threads(n)
    return n


def thread_settings() -> dict[str, Any]:
    """The thread counts in force, as recorded with every result (reading them changes nothing)."""
    numba_threads = os.cpu_count() or 1  # numba's own default, until numba is imported or NUMBA_NUM_THREADS set
    numba = sys.modules.get("numba")
    if numba is not None:
        started = getattr(sys.modules.get("numba.np.ufunc.parallel"), "_is_initialized", False)  # numba's own flag
        # get_num_threads() would start the pool (and reset torch's count): read the configured size until then
        numba_threads = numba.get_num_threads() if started else numba.config.NUMBA_NUM_THREADS
    elif os.environ.get("NUMBA_NUM_THREADS", "").isdigit():
        numba_threads = int(os.environ["NUMBA_NUM_THREADS"])
    return {
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba_threads,
        "cpus_available": available_cpus(),
    }


def _numba_follows_omp_num_threads() -> None:
    """At import: an OMP_NUM_THREADS the user set holds for numba too, so that scanpy's numba code does not
    raise torch's count to every CPU; possible only before numba is imported (scanpy imports it: after
    ``import scanpy``, call :func:`set_threads`)."""
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1 and "NUMBA_NUM_THREADS" not in os.environ and "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = omp


_numba_follows_omp_num_threads()
