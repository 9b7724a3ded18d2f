"""Print the largest absolute difference to the official reference outputs, per fixture and output.

Usage: python scripts/compare_official.py [FIXTURE_DIR]   (default: $OPENCELLPLM_OFFICIAL_FIXTURES,
else the repository's tests/data/official)
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from opencellplm.testing.official_fixtures import compare_fixture, official_fixture_dir


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else official_fixture_dir()
    files = sorted(folder.glob("*.pt"))
    if not files:
        print(f"no *.pt fixtures in {folder}", file=sys.stderr)
        return 1
    print("| fixture | output | cases | largest abs diff |")
    print("|---|---|---|---|")
    for path in files:
        worst: dict[str, float] = defaultdict(float)
        cases: dict[str, set[str]] = defaultdict(set)
        for d in compare_fixture(path):
            worst[d.output] = max(worst[d.output], d.max_abs_diff)
            cases[d.output].add(d.case)
        for output, value in worst.items():
            print(f"| {path.stem} | {output} | {', '.join(sorted(cases[output]))} | {value:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
