"""Guided attention (Tachibana et al., 2018) on a monotonic task and on a crossing one
(chapter 15).

For each task, two arms train the same model from the same seed on the same batches for the
same steps: the task's recipe (``training.RECIPES``, with ``--positional`` for ``copy``), and
the same plus ``--weight`` times the guided-attention penalty of every decoder layer's
cross-attention (``tips.GuidedAttention``, width ``--g``). Every ``--eval-every`` steps the
validation exact match is recorded with the training time so far (the time spent in training
steps, without the evaluations); at the end the test exact match and the penalty of the
final model's attention on the test set (how diagonal it is, for both arms).

``copy``'s alignment is the diagonal: output position t reads source position t. ``de2num``'s
crosses: *vierundachtzig* -> ``84`` writes the tens (*achtzig*, at the end) first.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/tips_guided.py --threads 1
    python benchmarks/tips_guided.py --fast

Output (``--out``, default ``benchmarks/results/tips_guided.json``, plot ``.png``)::

    {"benchmark": "tips_guided", "weight": 1.0, "g": 0.2, "seeds": [0, 1, 2],
     "tasks": {"copy": {"steps": 300, "eval_every": 20, "recipe": {...},
                        "arms": {"plain": {"curve": [per seed: [[step, train_s, exact], ...]],
                                           "test_exact_match": [per seed],
                                           "test_penalty": [per seed], "seconds": [...]},
                                 "guided": {...}}},
               "de2num": {...}},
     "seconds": ..., "command": ..., "torch": ..., "load_average": ...}
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from _common import ROOT, begin_run, write_results

from scratchformer import tips
from scratchformer.data import BatchStream, PairDataset, collate, make_task
from scratchformer.training import (
    RECIPES,
    evaluate,
    fit,
    make_optimizer,
    model_from_recipe,
    teacher_forcing,
)


@torch.no_grad()
def attention_penalty(model, pairs, src_vocab, tgt_vocab, g: float) -> float:
    """The guided-attention penalty of the model's teacher-forced cross-attention on pairs."""
    data = PairDataset(pairs, src_vocab, tgt_vocab)
    src, tgt = collate([data[i] for i in range(len(data))], 0)
    tgt_in, labels = teacher_forcing(tgt)
    was = model.training
    model.eval()
    with tips.cross_attention_captured(model) as weights:
        model(src, tgt_in)
    model.train(was)
    return float(tips.guided_attention_loss(torch.stack(weights), src != 0, labels != 0, g))


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = result["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.4), squeeze=False)
    for ax, (task, t) in zip(axes[0], tasks.items()):
        for arm, colour in (("plain", "tab:blue"), ("guided", "tab:orange")):
            for s, curve in enumerate(t["arms"][arm]["curve"]):
                ax.plot([c[0] for c in curve], [c[2] for c in curve], "o-", ms=3,
                        color=colour, alpha=0.7, label=arm if s == 0 else None)
        ax.set_xlabel("training step")
        ax.set_ylabel("validation exact match")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{task}: guided weight {result['weight']}, g = {result['g']}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["copy", "de2num"], choices=("copy", "de2num"))
    p.add_argument("--positional", default="sinusoidal", help="copy's positions")
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--g", type=float, default=0.2)
    p.add_argument("--copy-steps", type=int, default=None, help="default 300; --fast 10")
    p.add_argument("--de2num-steps", type=int, default=None, help="default 1000; --fast 10")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1")
    p.add_argument("--n-test", type=int, default=None, help="default 500; --fast 50")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--fast", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/tips_guided.json")
    args = p.parse_args(argv)
    args.copy_steps = args.copy_steps or (10 if args.fast else 300)
    args.de2num_steps = args.de2num_steps or (10 if args.fast else 1000)
    args.seeds = args.seeds or ([0] if args.fast else [0, 1])
    args.n_test = args.n_test or (50 if args.fast else 500)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = begin_run(args.threads)
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    began = time.perf_counter()
    tasks = {}
    for task in args.tasks:
        steps = args.copy_steps if task == "copy" else args.de2num_steps
        recipe = dict(RECIPES[task], steps=steps)
        if task == "copy":
            recipe["positional"] = args.positional
        recipe["warmup"] = min(recipe["warmup"], max(steps // 5, 1))
        every = max(steps // (15 if task == "copy" else 10), 1)
        data = make_task(task, recipe["n_train"], n_valid=200, n_test=args.n_test, seed=0)
        arms = {arm: {"curve": [], "test_exact_match": [], "test_penalty": [], "seconds": []}
                for arm in ("plain", "guided")}
        for seed in args.seeds:
            for arm, r in arms.items():
                torch.manual_seed(seed)
                model = model_from_recipe(recipe, len(data.src_vocab), len(data.tgt_vocab))
                optimizer, scheduler = make_optimizer(model, recipe)
                stream = BatchStream(PairDataset(data.train, data.src_vocab, data.tgt_vocab),
                                     recipe["batch_size"], seed=seed)
                loss_fn = tips.GuidedAttention(args.weight, args.g) if arm == "guided" else None
                trained = [0.0]
                curve = []

                def on_log(record, trained=trained, curve=curve):
                    trained[0] += record["tokens"] / max(record["tokens_per_s"], 1e-9)
                    if "exact_match" in record:
                        curve.append([record["step"], trained[0], record["exact_match"]])

                tick = time.perf_counter()
                fit(model, optimizer, scheduler, lambda step, s=stream: [s.batch(step)],
                    steps=steps, epsilon=recipe["label_smoothing"], log_every=every,
                    eval_every=every, progress=False, loss_fn=loss_fn, on_log=on_log,
                    evaluate_fn=lambda m, d=data: evaluate(m, d.valid, d.src_vocab,
                                                           d.tgt_vocab))
                test = evaluate(model, data.test, data.src_vocab, data.tgt_vocab)
                r["curve"].append(curve)
                r["test_exact_match"].append(test["exact_match"])
                r["test_penalty"].append(attention_penalty(
                    model, data.test[:200], data.src_vocab, data.tgt_vocab, args.g))
                r["seconds"].append(time.perf_counter() - tick)
                print(f"{task:7s} {arm:7s} seed {seed}  test exact match "
                      f"{test['exact_match']:.3f}  penalty {r['test_penalty'][-1]:.3f}  "
                      f"{r['seconds'][-1]:.0f} s", flush=True)
        tasks[task] = {"steps": steps, "eval_every": every, "n_valid": len(data.valid),
                       "n_test": len(data.test), "arms": arms,
                       "recipe": {k: v for k, v in recipe.items()
                                  if k not in ("eval_every", "log_every")}}
    out = {"benchmark": "tips_guided", "weight": args.weight, "g": args.g,
           "seeds": args.seeds, "tasks": tasks}
    result = write_results(args.out, out, began=began, command=command, load=load,
                           fast=args.fast)
    plot(result, args.out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
