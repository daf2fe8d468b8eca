"""Optimising the metric: REINFORCE on sentence-level chrF against more cross-entropy.

A `date` model is trained briefly with cross-entropy (the `date` recipe, ``--pretrain`` steps).
From that checkpoint two runs continue for ``--steps`` steps each, on the same batches:

* **cross-entropy**: the recipe's training continues (teacher forcing, label smoothing, the
  same optimizer state and schedule);
* **REINFORCE** (Williams, 1992; for sequences Ranzato et al., 2016): per source sentence
  ``--samples`` outputs are sampled from the model (temperature 1, every token but <pad> and
  <s>), each is scored with sentence-level chrF against the target (sacrebleu, 0-100, divided
  by 100), and the loss is ``-(R - b) log p(y | x)`` averaged over the samples, where the
  baseline b of a sample is the mean reward of the *other* samples of the same source (a
  leave-one-out baseline: it does not depend on the sample, so the gradient stays unbiased,
  and it cuts the variance). Adam with a constant rate ``--rl-lr``, dropout off (the samples
  and their log-probabilities come from the same network), gradients clipped to norm 1.

Both are evaluated every ``--eval-every`` steps on the same held-out test pairs with greedy
decoding: exact match, corpus chrF and character-level corpus BLEU (scratchformer.metrics).
Everything is repeated for each of ``--seeds`` (data, initialisation, batches and samples).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/optimise_metric.py --threads 1 --seeds 0 1 2
    python benchmarks/optimise_metric.py --fast        # a smoke run of a few seconds

Output (``--out``, default ``benchmarks/results/optimise_metric.json``)::

    {
      "benchmark": "optimise_metric", "task": "date", "seeds": [0, 1, 2],
      "pretrain_steps": 600, "steps": 300, "eval_every": 50, "n_test": 500,
      "samples": 4, "batch_size": 64, "rl_lr": 1e-4, "reward": "sentence chrF / 100",
      "recipe": {...},                             # RECIPES["date"]
      "runs": {                                    # one entry per seed, in order
        "cross_entropy": [{"step": [0, 50, ...], "exact_match": [...], "chrf": [...],
                           "bleu_char": [...], "seconds": ...}, ...],
        "reinforce": [{... the same keys ..., "mean_reward": [None, ...]}, ...]
      },                                           # step 0: the briefly trained start
      "seconds": ..., "command": ..., "torch": ..., "threads": 1, "fast": false,
      "load_average": [...], "load_average_end": [...], "machine": "x86_64"
    }
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import sacrebleu
import torch
import torch.nn.functional as F
from _common import ROOT, command_line, write_results

from scratchformer import data
from scratchformer import metrics as M
from scratchformer.data import BOS_ID, EOS_ID, PAD_ID
from scratchformer.training import (
    RECIPES,
    fit,
    make_optimizer,
    model_from_recipe,
    teacher_forcing,
    translate,
)


def scores(model, pairs, task) -> dict:
    """Greedy outputs on ``pairs``: exact match (0-1), corpus chrF and char-level BLEU (0-100)."""
    outputs = translate(model, [s for s, _ in pairs], task.src_vocab, task.tgt_vocab)
    targets = [t for _, t in pairs]
    return {"exact_match": M.exact_match(outputs, targets), "chrf": M.chrf(outputs, targets),
            "bleu_char": M.corpus_bleu(outputs, targets, tokenize="char")}


@torch.no_grad()
def sample(model, src, max_len: int, generator: torch.Generator) -> torch.Tensor:
    """Ancestral sampling, temperature 1: ``src (B, S)`` -> ``(B, <= max_len)`` without <s>,
    pads after each row's </s>. <pad> and <s> are never sampled."""
    src_mask = (src != PAD_ID).unsqueeze(1)
    memory = model.encode(src, src_mask)
    ys = torch.full((src.shape[0], 1), BOS_ID)
    done = torch.zeros(src.shape[0], dtype=torch.bool)
    for _ in range(max_len):
        logits = model.decode(ys, memory, src_mask)[:, -1].float()
        logits[:, [PAD_ID, BOS_ID]] = -torch.inf
        token = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        token = token.masked_fill(done, PAD_ID)
        ys = torch.cat([ys, token[:, None]], dim=1)
        done |= token == EOS_ID
        if done.all():
            break
    return ys[:, 1:]


def reinforce_step(model, optimizer, src, tgt, task, samples: int,
                   generator: torch.Generator) -> float:
    """One REINFORCE step with a leave-one-out baseline; returns the mean reward."""
    B = src.shape[0]
    src_rep = src.repeat_interleave(samples, dim=0)                    # (B*K, S)
    out = sample(model, src_rep, max_len=tgt.shape[1] + 4, generator=generator)
    targets = [task.tgt_vocab.decode(row.tolist()) for row in tgt]
    hyps = [task.tgt_vocab.decode(row.tolist()) for row in out]
    rewards = torch.tensor([
        sacrebleu.sentence_chrf(h, [targets[i // samples]]).score / 100
        for i, h in enumerate(hyps)]).view(B, samples)
    baseline = (rewards.sum(1, keepdim=True) - rewards) / (samples - 1)   # leave one out
    advantage = (rewards - baseline).view(-1)
    seq = torch.cat([torch.full((B * samples, 1), BOS_ID), out], dim=1)     # <s> y ...
    tgt_in, labels = teacher_forcing(seq)
    logp = F.log_softmax(model(src_rep, tgt_in).float(), -1)
    token_logp = logp.gather(-1, labels.unsqueeze(-1))[..., 0] * (labels != PAD_ID)
    loss = -(advantage * token_logp.sum(1)).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(rewards.mean())


def run_seed(args, seed: int) -> dict:
    """Pretrain, then both continuations, for one seed: {"cross_entropy": run, "reinforce": run}.
    """
    recipe = dict(RECIPES["date"])
    torch.manual_seed(seed)
    task = data.make_task("date", recipe["n_train"], n_test=args.n_test, seed=seed)
    test = task.test[:args.n_test]
    stream = data.BatchStream(data.PairDataset(task.train, task.src_vocab, task.tgt_vocab),
                              recipe["batch_size"], seed=seed)
    model = model_from_recipe(recipe, len(task.src_vocab), len(task.tgt_vocab))
    optimizer, scheduler = make_optimizer(model, recipe)
    fit(model, optimizer, scheduler, lambda s: [stream.batch(s)], steps=args.pretrain,
        epsilon=recipe["label_smoothing"], log_every=100, progress=False)
    start = scores(model, test, task)
    print(f"seed {seed}, after pretraining:", start, flush=True)

    runs = {}
    # cross-entropy: the same run continued, optimizer state and schedule included
    ce_model = copy.deepcopy(model)
    ce_opt, ce_sched = make_optimizer(ce_model, recipe)
    ce_opt.load_state_dict(optimizer.state_dict())
    ce_sched.load_state_dict(scheduler.state_dict())
    run = {"step": [0], **{k: [v] for k, v in start.items()}}
    tick = time.perf_counter()
    for first in range(0, args.steps, args.eval_every):
        last = min(first + args.eval_every, args.steps)
        fit(ce_model, ce_opt, ce_sched, lambda s: [stream.batch(s)],
            steps=args.pretrain + last, start_step=args.pretrain + first,
            epsilon=recipe["label_smoothing"], log_every=100, progress=False)
        for k, v in scores(ce_model, test, task).items():
            run[k].append(v)
        run["step"].append(last)
        print("cross-entropy", last, {k: run[k][-1] for k in start}, flush=True)
    run["seconds"] = time.perf_counter() - tick
    runs["cross_entropy"] = run

    rl_model = copy.deepcopy(model).eval()                                # dropout off
    rl_opt = torch.optim.Adam(rl_model.parameters(), lr=args.rl_lr, betas=(0.9, 0.98),
                              eps=1e-9)
    generator = torch.Generator().manual_seed(seed)
    run = {"step": [0], **{k: [v] for k, v in start.items()}, "mean_reward": [None]}
    rewards, tick = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        src, tgt = stream.batch(args.pretrain + step)                     # the CE run's batches
        rewards.append(reinforce_step(rl_model, rl_opt, src, tgt, task, args.samples,
                                      generator))
        if step % args.eval_every == 0 or step == args.steps:
            for k, v in scores(rl_model, test, task).items():
                run[k].append(v)
            run["step"].append(step)
            run["mean_reward"].append(sum(rewards) / len(rewards))
            rewards = []
            print("reinforce", step, {k: run[k][-1] for k in (*start, "mean_reward")},
                  flush=True)
    run["seconds"] = time.perf_counter() - tick
    runs["reinforce"] = run
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain", type=int, default=600)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--rl-lr", type=float, default=1e-4)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "optimise_metric.json")
    args = parser.parse_args()
    if args.fast:
        args.pretrain, args.steps, args.eval_every, args.n_test = 40, 20, 10, 50
        args.seeds = args.seeds[:1]
    if args.threads:
        torch.set_num_threads(args.threads)
    began, load, command = time.perf_counter(), list(os.getloadavg()), command_line()

    per_seed = [run_seed(args, seed) for seed in args.seeds]
    runs = {name: [r[name] for r in per_seed] for name in ("cross_entropy", "reinforce")}
    recipe = dict(RECIPES["date"])
    write_results(args.out, {
        "benchmark": "optimise_metric", "task": "date", "seeds": args.seeds,
        "pretrain_steps": args.pretrain, "steps": args.steps, "eval_every": args.eval_every,
        "n_test": args.n_test, "samples": args.samples, "batch_size": recipe["batch_size"],
        "rl_lr": args.rl_lr, "reward": "sentence chrF / 100", "recipe": recipe,
        "runs": runs,
    }, began=began, command=command, load=load, fast=args.fast)


if __name__ == "__main__":
    main()
