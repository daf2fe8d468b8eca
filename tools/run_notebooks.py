"""Execute chapter notebooks top to bottom in a fresh kernel and save their outputs in place.

Chapters are committed WITH outputs (Colab opens the committed file), so after editing a
chapter run ``make outputs`` (or ``python tools/run_notebooks.py notebooks/02_*.ipynb``).
Prints each notebook's wall time; fails if any notebook takes longer than the 2-minute budget.

The stored outputs are made with ONE thread (``OMP_NUM_THREADS=1``), as ``make book`` runs
them: a training run's result depends on the thread count (the sums are split differently,
and small differences grow over hundreds of steps), and the prose quotes the numbers the built
book shows, so both must use the same count; one is what every machine has.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from nbclient import NotebookClient

import nbtools

BUDGET_SECONDS = 120


THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}   # as `make book` (Makefile)


def execute(path: Path, fast: bool = False) -> float:
    nb = nbtools.read(path)
    env_fast = os.environ.pop("SCRATCHFORMER_FAST", None)
    saved = {k: os.environ.get(k) for k in THREADS}
    os.environ.update(THREADS)
    if fast:
        os.environ["SCRATCHFORMER_FAST"] = "1"
    try:
        start = time.perf_counter()
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        seconds = time.perf_counter() - start
    finally:
        os.environ.pop("SCRATCHFORMER_FAST", None)
        if env_fast is not None:
            os.environ["SCRATCHFORMER_FAST"] = env_fast
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if not fast:
        nbtools.write(nb, path)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter")
    parser.add_argument("--fast", action="store_true", help="SCRATCHFORMER_FAST=1, do not save")
    args = parser.parse_args()
    paths = args.notebooks or nbtools.chapter_paths()
    slow = []
    for path in paths:
        seconds = execute(path.resolve(), fast=args.fast)
        print(f"{path.name}: {seconds:.1f} s{' (fast mode)' if args.fast else ''}", flush=True)
        if seconds > BUDGET_SECONDS:
            slow.append(path.name)
    if slow:
        print(f"over the {BUDGET_SECONDS} s budget: {', '.join(slow)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
