"""Write the README's example files into the current directory (or --dir).

digits.csv    the built-in digits with a header: pixel_0_0, …, pixel_7_7, digit
bad.csv       its first 200 rows, line 3's pixel_0_2 replaced by "x" (a typo to be refused)
heldout.csv   with --run RUN_DIR: that run's held-out rows (heldout.npz), same header

.venv/bin/python scripts/example_files.py [--run runs/digits] [--dir .]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from bnserve.training.data.loading import DIGITS_TARGET, load_dataset
from bnserve.training.rundir import load_run

BAD_LINE, BAD_COLUMN = 3, 2  # line 3 of the file (the second data row), third column
BAD_ROWS = 200  # enough rows that one text cell among numbers reads as a typo, not a text column


def _write(path: Path, names: list[str], x: np.ndarray, labels: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([*names, DIGITS_TARGET])
        for row, label in zip(x, labels, strict=True):
            writer.writerow([f"{value:g}" for value in row] + [label])
    print(f"wrote {path} ({len(labels)} rows)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="a finished run: also write its heldout.csv")
    parser.add_argument("--dir", type=Path, default=Path("."), help="where to write (default .)")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    digits = load_dataset("digits")
    classes = digits.class_names or []
    labels = [classes[index] for index in digits.y]
    _write(args.dir / "digits.csv", digits.feature_names, np.asarray(digits.x), labels)
    lines = (args.dir / "digits.csv").read_text().splitlines()[: BAD_ROWS + 1]
    cells = lines[BAD_LINE - 1].split(",")
    cells[BAD_COLUMN] = "x"
    lines[BAD_LINE - 1] = ",".join(cells)
    (args.dir / "bad.csv").write_text("\n".join(lines) + "\n")
    where = f"line {BAD_LINE}, column {BAD_COLUMN + 1}: x"
    print(f"wrote {args.dir / 'bad.csv'} ({BAD_ROWS} rows; {where})")
    if args.run is not None:
        run = load_run(args.run)
        names = run.meta["feature_names"]
        heldout_labels = [run.meta["class_names"][index] for index in run.heldout_y]
        _write(args.dir / "heldout.csv", names, run.heldout_x, heldout_labels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
