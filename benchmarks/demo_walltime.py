"""Wall time of ``opencellplm demo``, as a user meets it: a fresh process (imports included) into a new folder.

Usage: python benchmarks/demo_walltime.py [--seed 0] [--keep DIR]

Runs ``python -m opencellplm demo --out TMP/demo`` (with this interpreter) in a temporary folder, unless
``--keep`` names the folder to write (it must not exist), and prints one JSON document: the command, its
wall time, the demo's own step timings (from ``results.json``) and the last line it printed. Timings depend on
the machine and on what else runs on it; they are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="write the demo folder here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="opencellplm-demo-bench-") as tmp:
        out = args.keep or Path(tmp) / "demo"
        command = [sys.executable, "-m", "opencellplm", "demo", "--out", str(out), "--seed", str(args.seed)]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            sys.stderr.write(result.stderr[-4000:])
            sys.exit(result.returncode)
        results = json.loads((out / "results.json").read_text())
    print(
        json.dumps(
            {
                "command": " ".join(["opencellplm", *command[3:]]),
                "wall_s": round(wall, 1),
                "steps_s": results["timings_seconds"],
                "last_line": result.stdout.strip().splitlines()[-1],
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "load_average_1min_after": round(os.getloadavg()[0], 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
