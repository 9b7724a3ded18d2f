"""``opencellplm benchmark``: every task on every real data set that suits it, CellPLM beside every baseline."""

from .profiles import PROFILES, Profile
from .report import readme_section, summary_tables, update_readme, write_report
from .run import run_benchmark
from .tasks import TASKS

__all__ = [
    "PROFILES",
    "TASKS",
    "Profile",
    "readme_section",
    "run_benchmark",
    "summary_tables",
    "update_readme",
    "write_report",
]
