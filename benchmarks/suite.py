"""The CPU benchmark suite behind ``make bench``: five benchmarks, under 10 minutes on 2 cores.

Usage (from the repository root):

    make bench                                      # the suite, writes benchmarks/results/cpu/
    .venv/bin/python benchmarks/suite.py            # the same
    .venv/bin/python benchmarks/suite.py --quick --out-dir /tmp/suite   # smoke run (a minute)
    .venv/bin/python benchmarks/suite.py --only attention memory        # a subset

Runs, one after the other and each in its own process (so one cannot warm the caches of the
next or leave threads behind), with settings shortened to fit the time budget:

1. ``attention.py``: our explicit and fused attention against ``nn.MultiheadAttention`` and a
   bare ``F.scaled_dot_product_attention`` module, T = 64..512, 1 and 2 threads;
2. ``train_step.py``: one training step, ours against ``nn.Transformer``, 1 and 2 threads;
3. ``decode.py``: greedy decoding with and without the key/value cache, 1 and 2 threads;
4. ``memory.py``: peak memory of one training step, ours against ``nn.Transformer``;
5. ``time_to_accuracy.py``: training time to 100 % exact match on copy, 99 % on de2num (1
   thread).

Each writes its JSON into ``--out-dir`` (default ``benchmarks/results/cpu/``); the suite adds
``suite.json``: the commands, their wall times, exit codes and the load average around each
(``os.getloadavg``: the numbers of a run on a busy machine mean less, and the load says how
busy it was). The full-length runs that ``benchmarks/README.md`` discusses stay in
``benchmarks/results/*.json``; the suite never replaces them. A failing benchmark does not stop
the others; the suite then exits 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import cpu_model, load

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DIR = HERE / "results" / "cpu"
BUDGET_S = 600

# name -> (script, arguments of the full suite run, arguments of the --quick run)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "attention": ("attention.py", ["--threads", "1", "2", "--rounds", "2",
                                   "--min-run-time", "0.3"],
                  ["--quick", "--threads", "1"]),
    "train_step": ("train_step.py", ["--threads", "1", "2", "--rounds", "3",
                                     "--min-run-time", "2"],
                   ["--quick", "--threads", "1", "--d-model", "16", "--heads", "2",
                    "--layers", "1", "--d-ff", "32", "--batch", "4", "--length", "6",
                    "--vocab", "20"]),
    "decode": ("decode.py", ["--threads", "1", "2", "--rounds", "2", "--min-run-time", "0.5"],
               ["--quick", "--threads", "1"]),
    "memory": ("memory.py", ["--repeats", "1"], ["--quick"]),   # repeats agree to the byte
    "time_to_accuracy": ("time_to_accuracy.py", ["--threads", "1"],
                         ["--quick", "--tasks", "copy", "--no-progress"]),
}


def command(name: str, out_dir: Path, quick: bool) -> list[str]:
    """The command line that runs benchmark ``name`` writing into ``out_dir``."""
    script, full, smoke = BENCHMARKS[name]
    out_dir = Path(os.path.relpath(out_dir.resolve(), ROOT)) \
        if out_dir.resolve().is_relative_to(ROOT) else out_dir.resolve()
    cmd = [sys.executable, f"benchmarks/{script}", *(smoke if quick else full),
           "--out", str(out_dir / f"{name}.json")]               # run from the root
    if name == "decode":
        cmd += ["--plot", str(out_dir / "decode.png")]
    return cmd


def shown(cmd: list[str]) -> str:
    """The command as a reader would type it from the repository root."""
    return " ".join([".venv/bin/python", *cmd[1:]])


def run_suite(names: list[str], out_dir: Path, quick: bool) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    cores, start_load = os.cpu_count() or 1, load()
    if start_load[0] > 0.5 * cores:
        print(f"note: load average {start_load[0]:.2f} on {cores} cores before the suite: other "
              "work is running, and the timings will be noisier (each JSON records the load)",
              flush=True)
    began, runs = time.perf_counter(), {}
    for i, name in enumerate(names, 1):
        cmd = command(name, out_dir, quick)
        print(f"\n[{i}/{len(names)}] {name}: {shown(cmd)} "
              f"({time.perf_counter() - began:.0f} s into the suite, load {load()})", flush=True)
        before, tick = load(), time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=ROOT).returncode
        except KeyboardInterrupt:
            print(f"\nsuite interrupted during {name}; the finished results are in {out_dir}")
            raise
        runs[name] = {"command": shown(cmd), "returncode": rc,
                      "seconds": round(time.perf_counter() - tick, 1),
                      "load_before": before, "load_after": load(),
                      "output": f"{name}.json" if rc == 0 else None}
        if rc:
            print(f"{name} FAILED (exit {rc}); going on with the others", flush=True)
    total = time.perf_counter() - began
    return {
        "benchmark": "suite", "quick": quick, "runs": runs,
        "seconds": round(total, 1), "budget_s": BUDGET_S, "within_budget": total <= BUDGET_S,
        "cpu": cpu_model(), "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "load_at_start": start_load, "load_at_end": load(),
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="every benchmark's smoke mode")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS),
                   help="run these benchmarks only")
    p.add_argument("--out-dir", type=Path, default=None,
                   help=f"where the JSON goes (default {DEFAULT_DIR.relative_to(ROOT)}; "
                        "--quick: required)")
    args = p.parse_args(argv)
    if args.out_dir is None:
        if args.quick:
            p.error("--quick needs --out-dir (a smoke run never replaces measured results)")
        args.out_dir = DEFAULT_DIR
    result = run_suite(args.only, args.out_dir, args.quick)
    path = args.out_dir / "suite.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print(f"\nsuite: {len(result['runs'])} benchmark(s) in {result['seconds']:.0f} s "
          f"(budget {BUDGET_S} s), load at the end {result['load_at_end']}")
    for name, r in result["runs"].items():
        print(f"  {name:17s} {r['seconds']:6.1f} s  "
              f"{'ok' if r['returncode'] == 0 else 'FAILED'}")
    print(f"wrote {path}")
    if not args.quick and not result["within_budget"]:
        print(f"note: over the {BUDGET_S} s budget (load {result['load_at_end']})")
    return 0 if all(r["returncode"] == 0 for r in result["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
