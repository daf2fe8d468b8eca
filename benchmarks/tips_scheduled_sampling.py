"""Scheduled sampling against plain teacher forcing on long reversed strings (chapter 15).

Both arms train the same model (the ``reverse`` recipe of ``training.RECIPES``) on the same
batches (``BatchStream``, same seed) for the same number of steps; the scheduled-sampling arm
trains through ``fit(..., loss_fn=tips.ScheduledSampling())`` and sets the probability of
feeding the gold token before every step from the inverse sigmoid decay of Bengio et al. (2015),
``k / (k + exp(step / k))``, with ``k`` chosen so that it crosses 1/2 at ``--midpoint`` x steps.
Each arm is scored on the same held-out strings: greedy exact match, and per output position the
accuracy of the greedy (free-running) output and of the teacher-forced guesses.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/tips_scheduled_sampling.py --threads 1
    python benchmarks/tips_scheduled_sampling.py --fast     # a smoke run of a few seconds
    # a slower decay (1/2 only at the last step), scheduled sampling alone:
    OMP_NUM_THREADS=1 python benchmarks/tips_scheduled_sampling.py --threads 1 --seeds 0 1 \
        --midpoint 1.0 --arms scheduled_sampling \
        --out benchmarks/results/tips_scheduled_sampling_slow.json

Output (``--out``, default ``benchmarks/results/tips_scheduled_sampling.json``, and the plot
next to it as ``.png``)::

    {"benchmark": "tips_scheduled_sampling", "task": "reverse", "min_len": 10, "max_len": 20,
     "steps": 1200, "seeds": [0, 1], "k": ..., "midpoint": 0.5,
     "arms": {"teacher_forcing": {"exact_match": [per seed], "by_position": [per seed:
                                  {"greedy": [...], "teacher_forced": [...], "n": [...]}],
                                  "valid_curve": [per seed: [[step, exact match], ...]],
                                  "seconds": [per seed]},
              "scheduled_sampling": {... the same keys ...}},
     "recipe": {...}, "seconds": ..., "command": ..., "torch": ..., "load_average": ...}
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
from _common import ROOT, begin_run, write_results
from tqdm.auto import tqdm

from scratchformer import tips
from scratchformer.data import BatchStream, PairDataset, make_task
from scratchformer.training import RECIPES, evaluate, fit, make_optimizer, model_from_recipe


def k_for_midpoint(step: float) -> float:
    """The k >= 1 of the inverse sigmoid decay that crosses 1/2 at ``step`` (k ln k = step)."""
    lo, hi = 1.0, max(2.0, step)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid * math.log(mid) < step else (lo, mid)
    return (lo + hi) / 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default="reverse", choices=("copy", "reverse"))
    p.add_argument("--min-len", type=int, default=10)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--steps", type=int, default=None, help="default 1200; --fast 20")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1; --fast 0")
    p.add_argument("--midpoint", type=float, default=0.5,
                   help="the decay crosses 1/2 at this fraction of the steps")
    p.add_argument("--arms", nargs="+", default=["teacher_forcing", "scheduled_sampling"],
                   choices=("teacher_forcing", "scheduled_sampling"))
    p.add_argument("--n-test", type=int, default=None, help="default 500; --fast 50")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--fast", action="store_true")
    p.add_argument("--out", type=Path,
                   default=ROOT / "benchmarks/results/tips_scheduled_sampling.json")
    args = p.parse_args(argv)
    args.steps = args.steps or (20 if args.fast else 1200)
    args.seeds = args.seeds or ([0] if args.fast else [0, 1])
    args.n_test = args.n_test or (50 if args.fast else 500)
    return args


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    colours = {"teacher_forcing": "tab:blue", "scheduled_sampling": "tab:orange"}
    for arm, r in result["arms"].items():
        for s, by in enumerate(r["by_position"]):
            x = range(1, len(by["greedy"]) + 1)
            ax.plot(x, by["greedy"], "-", color=colours[arm], alpha=0.8,
                    label=f"{arm}, greedy" if s == 0 else None)
            ax.plot(x, by["teacher_forced"], ":", color=colours[arm], alpha=0.8,
                    label=f"{arm}, teacher-forced" if s == 0 else None)
    ax.set_xlabel("output position")
    ax.set_ylabel("accuracy at the position")
    ax.set_title(f"{result['task']} {result['min_len']}-{result['max_len']} characters, "
                 f"{result['steps']} steps, seeds {result['seeds']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = begin_run(args.threads)
    recipe = dict(RECIPES[args.task], steps=args.steps, max_len=args.max_len + 4)
    recipe["warmup"] = min(recipe["warmup"], max(args.steps // 5, 1))
    k = k_for_midpoint(args.midpoint * args.steps)
    data = make_task(args.task, recipe["n_train"], n_valid=200, n_test=args.n_test, seed=0,
                     min_len=args.min_len, max_len=args.max_len)
    arms = {name: {"exact_match": [], "by_position": [], "valid_curve": [], "seconds": [],
                   "final_loss": []} for name in args.arms}
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    began = time.perf_counter()
    bar = tqdm(total=len(args.seeds) * len(arms) * args.steps, unit="step", dynamic_ncols=True)
    for seed in args.seeds:
        for name, r in arms.items():
            bar.set_description(f"{name} seed {seed}")
            torch.manual_seed(seed)
            model = model_from_recipe(recipe, len(data.src_vocab), len(data.tgt_vocab))
            optimizer, scheduler = make_optimizer(model, recipe)
            stream = BatchStream(PairDataset(data.train, data.src_vocab, data.tgt_vocab),
                                 recipe["batch_size"], seed=seed)
            sampler = tips.ScheduledSampling() if name == "scheduled_sampling" else None

            def batch_at(step, sampler=sampler, stream=stream):
                if sampler is not None:
                    sampler.gold_prob = tips.inverse_sigmoid_decay(step, k)
                return [stream.batch(step)]

            def valid(model):
                return evaluate(model, data.valid, data.src_vocab, data.tgt_vocab)

            tick = time.perf_counter()
            every = max(args.steps // 8, 1)
            history = fit(model, optimizer, scheduler, batch_at, steps=args.steps,
                          epsilon=recipe["label_smoothing"], log_every=every,
                          eval_every=every, evaluate_fn=valid, progress=False,
                          loss_fn=sampler, on_log=lambda rec: None)
            bar.update(args.steps)
            by = tips.accuracy_by_position(model, data.test, data.src_vocab, data.tgt_vocab)
            r["exact_match"].append(by.pop("exact_match"))
            r["by_position"].append(by)
            r["valid_curve"].append([[h["step"], h["exact_match"]] for h in history
                                     if "exact_match" in h])
            r["seconds"].append(time.perf_counter() - tick)
            r["final_loss"].append(history[-1]["loss"])
            tqdm.write(f"{name:19s} seed {seed}  test exact match {r['exact_match'][-1]:.3f}  "
                       f"loss {history[-1]['loss']:.3f}  {r['seconds'][-1]:.0f} s")
    bar.close()
    out = {"benchmark": "tips_scheduled_sampling", "task": args.task, "min_len": args.min_len,
           "max_len": args.max_len, "n_test": args.n_test, "steps": args.steps,
           "seeds": args.seeds, "k": k, "midpoint": args.midpoint,
           "decay": "inverse sigmoid, gold probability k / (k + exp(step / k))",
           "arms": arms, "recipe": {key: v for key, v in recipe.items()
                                    if key not in ("eval_every", "log_every")}}
    result = write_results(args.out, out, began=began, command=command, load=load,
                           fast=args.fast)
    plot(result, args.out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
