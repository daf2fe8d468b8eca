"""The generated tasks, trained with their recipes: the results table of chapter 12.

For each task, builds the model, the optimizer and the schedule of ``training.RECIPES[task]``
(``model_from_recipe``, ``make_optimizer``: Adam, Noam warmup peaking at the recipe's rate),
trains it with ``training.fit`` on ``BatchStream`` batches of the training split for the
recipe's number of steps (no early stopping; the validation split is scored every
``eval_every`` steps for the history only), and scores the held-out test split: greedy exact
match and teacher-forced token accuracy (``training.evaluate``). ``copy`` is also scored on
its first 100 test strings ("100 fresh sequences").

Usage::

    OMP_NUM_THREADS=2 python benchmarks/tasks.py --threads 2
    python benchmarks/tasks.py --tasks copy --fast          # a smoke run of a few seconds
    python benchmarks/tasks.py --tasks de2num --set steps=2000 --set lr=0.003 --out /tmp/x.json

Output (``--out``, default ``benchmarks/results/tasks.json``)::

    {
      "benchmark": "tasks",
      "tasks": {
        "copy": {
          "exact_match": 1.0,                  # test split, greedy, in [0, 1]
          "token_accuracy": 1.0,               # test split, teacher-forced, in [0, 1]
          "n_test": 500,
          "exact_match_100": 1.0,              # copy only: the first 100 test strings
          "steps": 600, "seconds": 41.2,       # training + periodic evaluation wall time
          "tokens_per_s": 9000.0,              # training throughput over the whole run
          "parameters": 235520,
          "final_loss": 0.58,                  # mean training loss of the last log window
          "config": {...},                     # the recipe used, overrides included
          "threads": 2, "seed": 0, "command": "...",   # of this task's run
          "load_average": {"start": [..], "end": [..]},  # os.getloadavg() around it
          "history": [{"step": 50, "loss": 2.1, "lr": 0.001}, ...
                      {"step": 200, ..., "exact_match": 0.9, "token_accuracy": 0.98}]
        },
        ...
      },
      "seed": 0, "threads": 2, "torch": "2.x", "cpu": "...", "fast": false,
      "command": "OMP_NUM_THREADS=2 python benchmarks/tasks.py --threads 2",
      "load_average": {"start": [..], "end": [..]},   # os.getloadavg()
      "seconds": 900.0                         # the whole run
    }

``--name`` stores a variant (e.g. ``--tasks copy --set positional=sinusoidal --name "copy
(sinusoidal)"``) next to the recipe's result. With ``--tasks`` a subset, the tasks already in
the output file are kept (one file collects
runs made at different times; each task records its own command line and thread count).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from _common import cpu_model

from scratchformer.data import TASKS, BatchStream, PairDataset, make_task
from scratchformer.training import RECIPES, evaluate, fit, make_optimizer, model_from_recipe

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "tasks.json"




def _parse_overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in RECIPES["copy"]:
            raise SystemExit(f"--set {pair}: unknown recipe key {key!r}")
        kind = type(RECIPES["copy"][key])
        overrides[key] = (value == "True") if kind is bool else kind(value)
    return overrides


def run_task(task: str, overrides: dict, seed: int, fast: bool, progress: bool) -> dict:
    recipe = {**RECIPES[task], **overrides}
    if fast:
        recipe.update(steps=20, eval_every=10, log_every=10, n_train=min(recipe["n_train"], 500))
    data = make_task(task, recipe["n_train"], seed=seed)
    torch.manual_seed(seed)
    model = model_from_recipe(recipe, len(data.src_vocab), len(data.tgt_vocab))
    optimizer, scheduler = make_optimizer(model, recipe)
    stream = BatchStream(PairDataset(data.train, data.src_vocab, data.tgt_vocab),
                         recipe["batch_size"], seed=seed)
    valid = data.valid[:200]

    def on_valid(m):
        return evaluate(m, valid, data.src_vocab, data.tgt_vocab)

    def show(record):
        if "exact_match" in record:
            print(f"  {task} step {record['step']}: loss {record['loss']:.3f}, valid exact match "
                  f"{record['exact_match']:.3f}, {record['elapsed_s']:.0f} s", flush=True)

    start, load_start = time.perf_counter(), list(os.getloadavg())
    history = fit(model, optimizer, scheduler, lambda step: [stream.batch(step)],
                  steps=recipe["steps"], epsilon=recipe["label_smoothing"],
                  log_every=recipe["log_every"], eval_every=recipe["eval_every"],
                  evaluate_fn=on_valid, on_log=show, progress=progress)
    seconds = time.perf_counter() - start
    test = evaluate(model, data.test, data.src_vocab, data.tgt_vocab)
    result = {
        "exact_match": test["exact_match"], "token_accuracy": test["token_accuracy"],
        "n_test": test["n"], "steps": history.last_step, "seconds": round(seconds, 1),
        "tokens_per_s": round(sum(r["tokens"] for r in history)
                              / max(sum(r["tokens"] / r["tokens_per_s"] for r in history), 1e-9), 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": history[-1]["loss"], "config": recipe, "seed": seed,
        "threads": torch.get_num_threads(),
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "command": " ".join(["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "?"),
                             "python", *map(shlex.quote, sys.argv)]),
        "history": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()
                     if k in ("step", "loss", "lr", "exact_match", "token_accuracy")}
                    for r in history],
    }
    if task == "copy":
        result["exact_match_100"] = evaluate(model, data.test[:100], data.src_vocab,
                                             data.tgt_vocab)["exact_match"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value for every task run")
    parser.add_argument("--fast", action="store_true", help="a smoke run: 20 steps per task")
    parser.add_argument("--progress", action="store_true", help="show fit's progress bar")
    parser.add_argument("--name", default=None,
                        help="store the result under this name (one task only), e.g. "
                             "'copy (sinusoidal)' for a variant run with --set")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = _parse_overrides(args.set)
    if args.name and len(args.tasks) != 1:
        raise SystemExit("--name needs exactly one task")
    out = {"benchmark": "tasks", "tasks": {}}
    if args.out.exists() and (set(args.tasks) != set(TASKS) or args.name):
        out = json.loads(args.out.read_text())          # keep the other tasks' results
    start, load_start = time.perf_counter(), list(os.getloadavg())
    for task in args.tasks:
        print(f"{task}: {RECIPES[task] | overrides}", flush=True)
        name = args.name or task
        out["tasks"][name] = run_task(task, overrides, args.seed, args.fast, args.progress)
        r = out["tasks"][name]
        r["task"] = task
        print(f"{name}: test exact match {r['exact_match']:.4f}, token accuracy "
              f"{r['token_accuracy']:.4f}, {r['steps']} steps in {r['seconds']:.0f} s",
              flush=True)
    order = {t: i for i, t in enumerate(TASKS)}
    out["tasks"] = dict(sorted(out["tasks"].items(),
                               key=lambda kv: (order[kv[1].get("task", kv[0])], kv[0])))
    out.update({
        "seed": args.seed, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu": cpu_model(), "fast": args.fast,
        "command": " ".join(["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "?"),
                             "python", *map(shlex.quote, sys.argv)]),
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "seconds": round(time.perf_counter() - start, 1),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
