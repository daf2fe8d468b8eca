"""Wall time to a target exact match: copy to 100 %, de2num to 99 %, at the default recipes.

Usage (from the repository root):

    .venv/bin/python benchmarks/time_to_accuracy.py           # both tasks (about 4 minutes)
    .venv/bin/python benchmarks/time_to_accuracy.py --tasks copy --eval-every 25
    .venv/bin/python benchmarks/time_to_accuracy.py --quick --out /tmp/t.json   # smoke run

Each task trains the model of ``training.RECIPES[task]`` (``model_from_recipe``,
``make_optimizer``, ``training.fit`` on ``BatchStream`` batches, seed 0, as ``scratchformer
train`` does) and every ``--eval-every`` steps scores greedy exact match on the first
``--n-valid`` validation pairs (``training.evaluate``). Training stops at the first evaluation
that reaches the target, or at the recipe's number of steps. **Time to accuracy** is the
training wall time up to that evaluation, the evaluations themselves excluded (they are timed
separately: evaluating more often must not make training look slower); the JSON also keeps the
time with them. The model at the stopping point is then scored on the test split, so a target
reached by chance on the validation pairs shows. Results go to
``benchmarks/results/time_to_accuracy.json`` (or ``--out``); ``--quick`` (20 steps, targets
not expected to be reached) writes a file only with ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from _common import load, provenance, save_json

from scratchformer.data import BatchStream, PairDataset, make_task
from scratchformer.training import RECIPES, evaluate, fit, make_optimizer, model_from_recipe

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "time_to_accuracy.json"
TARGETS = {"copy": 1.0, "de2num": 0.99}


def run_task(task: str, args) -> dict:
    """Train ``task``'s recipe until the validation exact match reaches its target."""
    recipe = dict(RECIPES[task])
    if args.quick:
        recipe.update(steps=20, n_train=min(recipe["n_train"], 500))
    target = TARGETS[task]
    data = make_task(task, recipe["n_train"], seed=args.seed)
    torch.manual_seed(args.seed)
    model = model_from_recipe(recipe, len(data.src_vocab), len(data.tgt_vocab))
    optimizer, scheduler = make_optimizer(model, recipe)
    stream = BatchStream(PairDataset(data.train, data.src_vocab, data.tgt_vocab),
                         recipe["batch_size"], seed=args.seed)
    valid = data.valid[:args.n_valid]
    evals = {"seconds": 0.0, "count": 0}

    def on_valid(m):
        tick = time.perf_counter()
        scores = evaluate(m, valid, data.src_vocab, data.tgt_vocab)
        evals["seconds"] += time.perf_counter() - tick
        evals["count"] += 1
        return scores

    curve = []                      # one point per evaluation; fit asks stop() after on_log

    def on_log(record):
        if "exact_match" in record:
            train_s = record["elapsed_s"] - evals["seconds"]
            curve.append({"step": record["step"], "exact_match": record["exact_match"],
                          "train_seconds": round(train_s, 3),
                          "seconds_with_evaluation": round(record["elapsed_s"], 3)})

    start_load = load()
    history = fit(model, optimizer, scheduler, lambda step: [stream.batch(step)],
                  steps=recipe["steps"], epsilon=recipe["label_smoothing"],
                  log_every=args.eval_every, eval_every=args.eval_every, evaluate_fn=on_valid,
                  on_log=on_log, progress=not args.no_progress,
                  stop=lambda: bool(curve) and curve[-1]["exact_match"] >= target)
    reached = bool(curve) and curve[-1]["exact_match"] >= target
    test = evaluate(model, data.test, data.src_vocab, data.tgt_vocab)
    last = curve[-1] if curve else {"step": history.last_step, "train_seconds": None,
                                    "seconds_with_evaluation": None}
    result = {
        "task": task, "target_exact_match": target, "reached": reached,
        "steps": last["step"] if reached else None,
        "seconds": last["train_seconds"] if reached else None,
        "seconds_with_evaluation": last["seconds_with_evaluation"] if reached else None,
        "steps_run": history.last_step, "max_steps": recipe["steps"],
        "evaluation_seconds": round(evals["seconds"], 3), "evaluations": evals["count"],
        "valid_exact_match": curve[-1]["exact_match"] if curve else None,
        "test_exact_match": test["exact_match"], "test_token_accuracy": test["token_accuracy"],
        "n_valid": len(valid), "n_test": test["n"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "recipe": recipe, "curve": curve,
        "load_average": {"start": start_load, "end": load()},
    }
    verdict = (f"{result['valid_exact_match']:.3f} >= {target} after {result['steps']} steps, "
               f"{result['seconds']:.1f} s of training" if reached else
               f"target {target} not reached in {history.last_step} steps")
    print(f"{task}: {verdict}; test exact match {test['exact_match']:.3f} "
          f"(evaluations {evals['seconds']:.1f} s)", flush=True)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 20 steps, 500 training pairs, 50 validation pairs")
    p.add_argument("--tasks", nargs="+", choices=sorted(TARGETS), default=list(TARGETS))
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between evaluations (default 50; --quick 10)")
    p.add_argument("--n-valid", type=int, default=None,
                   help="validation pairs scored (default 200; --quick 50)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON file (default {DEFAULT_OUT.relative_to(HERE.parent)}; "
                        "--quick: none)")
    args = p.parse_args(argv)
    defaults = {"eval_every": 10, "n_valid": 50} if args.quick else {"eval_every": 50,
                                                                     "n_valid": 200}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None and not args.quick:
        args.out = DEFAULT_OUT
    if args.eval_every < 1 or args.n_valid < 1 or args.threads < 1:
        p.error("--eval-every, --n-valid and --threads must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    print(f"time to accuracy: {', '.join(f'{t} to {TARGETS[t]:.0%}' for t in args.tasks)}, "
          f"evaluating every {args.eval_every} steps on {args.n_valid} validation pairs, "
          f"{args.threads} thread(s); torch {torch.__version__}, load {load()}", flush=True)
    tasks = {task: run_task(task, args) for task in args.tasks}
    result = {
        "benchmark": "time_to_accuracy",
        "description": "training wall time (evaluations excluded) until greedy exact match on "
                       "the validation pairs reaches the target, at the default recipe",
        "tasks": tasks,
        "config": {"eval_every": args.eval_every, "n_valid": args.n_valid, "seed": args.seed,
                   "quick": args.quick, "targets": {t: TARGETS[t] for t in args.tasks}},
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - began,
        **provenance(),
    }
    if args.out is not None:
        save_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
