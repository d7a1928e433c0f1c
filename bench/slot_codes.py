"""The slots of a mixed model's text cells three ways, for the packed path (docs/serving.md):
what `Front.codes` does (a `map` of each column's `dict.get`), a list comprehension of the same
`get`, and numpy's `np.unique` + `np.searchsorted` over each column's sorted keys.

The model is bench/serve_mixed.py's (4 text columns of 10, 30, 60 and 100 levels); the cells
are its known levels. Times are this thread's CPU µs per call, the median over interleaved
rounds. In process, one thread: safe beside other work, since the three ways alternate.

Usage: python bench/slot_codes.py [--rounds 7] [--calls 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _numpy_way(lookups: tuple[dict[str, int], ...], defaults: tuple[int, ...]) -> Callable:
    tables = []
    for lookup, default in zip(lookups, defaults, strict=True):
        keys = sorted(lookup)
        tables.append((np.array(keys), np.array([lookup[k] for k in keys], np.int64), default))

    def codes(texts: list[str], count: int) -> np.ndarray:
        out = np.empty((count, len(tables)), np.int64)
        for index, (keys, values, default) in enumerate(tables):
            cells = np.array(texts[index * count : (index + 1) * count], dtype=str)
            unique, inverse = np.unique(cells, return_inverse=True)
            at = np.searchsorted(keys, unique).clip(0, len(keys) - 1)
            out[:, index] = np.where(keys[at] == unique, values[at], default)[inverse]
        return out

    return codes


def _comprehension_way(lookups: tuple[dict[str, int], ...], defaults: tuple[int, ...]) -> Callable:
    gets = [lookup.get for lookup in lookups]

    def codes(texts: list[str], count: int) -> np.ndarray:
        slots: list[int] = []
        for index, (get, default) in enumerate(zip(gets, defaults, strict=True)):
            slots += [get(text, default) for text in texts[index * count : (index + 1) * count]]
        return np.ascontiguousarray(np.array(slots, np.int64).reshape(len(gets), count).T)

    return codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    arguments = parser.parse_args(argv)
    import onnx
    import serve_mixed

    from bnserve.server.modelfile.front import find_front
    from bnserve.server.modelfile.schema import InputSchema

    with tempfile.TemporaryDirectory(prefix="bnserve-slots-") as scratch:
        mixed, _, how = serve_mixed.build_models(Path(scratch), (32,))
        model_bytes = mixed.read_bytes()
        metadata = {p.key: p.value for p in onnx.load_from_string(model_bytes).metadata_props}
    front = find_front(model_bytes, InputSchema.from_json(json.loads(metadata["bnserve.schema"])))
    if front is None:
        print(f"the model ({how}) has no export front to cut", file=sys.stderr)
        return 1
    ways = {
        "Front.codes (map of dict.get)": front.codes,
        "list comprehension of dict.get": _comprehension_way(front.lookups, front.default_slots),
        "np.unique + np.searchsorted": _numpy_way(front.lookups, front.default_slots),
    }
    rng = np.random.default_rng(0)
    for count in (1, 64):
        texts: list[str] = []
        for lookup in front.lookups:
            levels = [key for key in lookup if key.startswith("L")]  # the model's known levels
            texts += [levels[i] for i in rng.integers(0, len(levels), count)]
        answers = [way(texts, count) for way in ways.values()]
        assert all(np.array_equal(answers[0], answer) for answer in answers)
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(arguments.rounds):
            for name, way in ways.items():
                started = time.thread_time_ns()
                for _ in range(arguments.calls):
                    way(texts, count)
                times[name].append((time.thread_time_ns() - started) / arguments.calls / 1000)
        print(f"{count} row(s) × {len(front.lookups)} text columns:")
        for name, spent in times.items():
            print(f"  {name:<34}{statistics.median(spent):>8.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
