"""Rotary against sinusoidal positions: one task, the same recipe otherwise.

Trains the Transformer of ``training.RECIPES[task]`` with ``positional="sinusoidal"`` and
with ``positional="rotary"`` (RoPE, Su et al., 2021: queries and keys rotated in every
self-attention), for each of several seeds: for a seed, both runs share the data, the
initial random state, the batches (``BatchStream``), the optimizer and schedule
(``training.make_optimizer``) and the loss. Reports, per encoding, the held-out greedy exact
match (``training.evaluate`` on the test split), the final training loss and the wall time,
per seed and averaged: one seed alone cannot tell a difference of a few points from noise.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/positional_rope.py --threads 1
    python benchmarks/positional_rope.py --fast      # a smoke run of a few seconds

Output (``--out``, default ``benchmarks/results/positional_rope.json``)::

    {
      "benchmark": "positional_rope",
      "task": "reverse",
      "n_train": 5000, "n_test": 500, "seeds": [0, 1, 2],
      "recipe": {...},                     # RECIPES[task] with the overrides used (steps,
                                           # warmup <= steps / 5, ...), without "positional"
      "runs": {
        "sinusoidal": {
          "exact_match": 0.97,             # held-out, greedy, in [0, 1]; mean over seeds
          "token_accuracy": 0.99,          # held-out, teacher-forced, in [0, 1]; mean
          "final_loss": 0.61,              # mean training loss of the last log window; mean
          "seconds": 240.3,                # training + evaluation wall time, all seeds
          "per_seed": {"exact_match": [...], "token_accuracy": [...],
                       "final_loss": [...], "seconds": [...]},   # in the order of "seeds"
          "parameters": 235520,
          "history": [{"step": 50, "loss": 2.1}, {"step": 200, "loss": 1.2,
                       "exact_match": 0.28}, ...]
                                           # first seed: every log_every steps;
                                           # "exact_match" (valid split) on evaluation steps
        },
        "rotary": {... the same keys ...}
      },
      "seconds": 510.2,                    # the whole run
      "command": "OMP_NUM_THREADS=1 python benchmarks/positional_rope.py --threads 1",
      "torch": "2.x", "threads": 1, "fast": false,
      "load_average": [2.1, 2.0, 1.9],     # os.getloadavg() at the start
      "load_average_end": [...],           # ... and at the end
      "machine": "x86_64"                  # platform.machine()
    }
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from _common import ROOT, begin_run, fit_with_bar, write_results
from tqdm.auto import tqdm

from scratchformer.data import TASKS, BatchStream, PairDataset, make_task
from scratchformer.training import RECIPES, evaluate, model_from_recipe

POSITIONALS = ("sinusoidal", "rotary")




def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default="reverse", choices=TASKS)
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per run (default: the recipe's; --fast 30)")
    p.add_argument("--n-train", type=int, default=None,
                   help="training pairs (default: the recipe's; --fast 500)")
    p.add_argument("--n-test", type=int, default=None, help="held-out pairs (default 500; --fast 100)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="validation exact match every N steps (default: the recipe's; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--seeds", type=int, default=None,
                   help="number of seeds (data, initialisation, batch order); default 3, --fast 1")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--fast", action="store_true", help="a smoke run of a few seconds")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/positional_rope.json")
    args = p.parse_args(argv)
    recipe = dict(RECIPES[args.task])
    args.steps = args.steps or (30 if args.fast else recipe["steps"])
    args.n_train = args.n_train or (500 if args.fast else recipe["n_train"])
    args.n_test = args.n_test or (100 if args.fast else 500)
    args.seeds = args.seeds or (1 if args.fast else 3)
    if args.eval_every is None:
        args.eval_every = 0 if args.fast else recipe["eval_every"]
    if min(args.steps, args.n_train, args.n_test, args.seeds) < 1 or args.eval_every < 0:
        p.error("--steps, --n-train, --n-test and --seeds must be positive, --eval-every >= 0")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = begin_run(args.threads)
    recipe = dict(RECIPES[args.task], steps=args.steps, n_train=args.n_train,
                  eval_every=args.eval_every)
    del recipe["positional"]  # the one thing that differs between the runs
    recipe["warmup"] = min(recipe["warmup"], max(args.steps // 5, 1))
    n_valid = 200 if args.eval_every else 0
    seeds = list(range(args.seed, args.seed + args.seeds))
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    began = time.perf_counter()
    keys = ("exact_match", "token_accuracy", "final_loss", "seconds")
    runs = {p: {"per_seed": {k: [] for k in keys}} for p in POSITIONALS}
    bar = tqdm(total=len(seeds) * len(POSITIONALS) * args.steps, unit="step",
               dynamic_ncols=True)
    for seed in seeds:  # both encodings for a seed in turn: a load change hits both
        data = make_task(args.task, args.n_train, n_valid=n_valid, n_test=args.n_test,
                         seed=seed)
        stream = BatchStream(PairDataset(data.train, data.src_vocab, data.tgt_vocab),
                             recipe["batch_size"], seed=seed)
        for positional in POSITIONALS:
            bar.set_description(f"{positional} seed {seed}")
            torch.manual_seed(seed)
            model = model_from_recipe(dict(recipe, positional=positional),
                                      len(data.src_vocab), len(data.tgt_vocab))
            def on_valid(m, data=data):
                return {"exact_match": evaluate(m, data.valid, data.src_vocab,
                                                data.tgt_vocab)["exact_match"]}

            tick = time.perf_counter()
            history = fit_with_bar(model, recipe, stream, bar, steps=args.steps,
                                   log_every=min(recipe["log_every"], args.steps),
                                   eval_every=args.eval_every,
                                   evaluate_fn=on_valid if args.eval_every else None)
            scores = evaluate(model, data.test, data.src_vocab, data.tgt_vocab)
            run = runs[positional]
            for k, v in zip(keys, (scores["exact_match"], scores["token_accuracy"],
                                   history[-1]["loss"], time.perf_counter() - tick)):
                run["per_seed"][k].append(v)
            run["parameters"] = sum(p.numel() for p in model.parameters())
            if seed == seeds[0]:
                run["history"] = [{k: r[k] for k in ("step", "loss", "exact_match") if k in r}
                                  for r in history]
            tqdm.write(f"{positional:10s} seed {seed}  exact match {scores['exact_match']:.3f}"
                       f"  token acc {scores['token_accuracy']:.3f}  final loss "
                       f"{history[-1]['loss']:.3f}  {run['per_seed']['seconds'][-1]:.0f} s")
    for run in runs.values():
        for k in keys:
            values = run["per_seed"][k]
            run[k] = sum(values) if k == "seconds" else sum(values) / len(values)
    bar.close()
    out = {
        "benchmark": "positional_rope", "task": args.task, "n_train": args.n_train,
        "n_test": args.n_test, "seeds": seeds, "recipe": recipe, "runs": runs,
    }
    return write_results(args.out, out, began=began, command=command, load=load,
                         fast=args.fast)


if __name__ == "__main__":
    main()
