"""Run every benchmark in bench/ (each bench/*.py but this file), one fresh process each.

    .venv/bin/python bench/run_all.py [NAME ...]     # e.g. `train export`; default: all

Exits non-zero if any benchmark fails, after running the rest.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def benchmark_scripts(names: list[str]) -> list[Path]:
    scripts = sorted(path for path in BENCH_DIR.glob("*.py") if path.name != Path(__file__).name)
    if names:
        scripts = [path for path in scripts if path.stem in names]
    return scripts


def main(argv: list[str]) -> int:
    failed = []
    for script in benchmark_scripts(argv):
        print(f"== bench/{script.name}", flush=True)
        completed = subprocess.run([sys.executable, str(script)], cwd=BENCH_DIR.parent, check=False)
        if completed.returncode != 0:
            failed.append(script.name)
        print(flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
