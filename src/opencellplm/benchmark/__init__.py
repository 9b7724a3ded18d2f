"""``opencellplm benchmark``: every task on every real data set that suits it, CellPLM beside every baseline."""

from .profiles import PROFILES, Profile
from .run import run_benchmark
from .tasks import TASKS

__all__ = ["PROFILES", "TASKS", "Profile", "run_benchmark"]
