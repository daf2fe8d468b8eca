"""Warmup at a high learning rate: post-LN with and without it, against pre-LN without (chapter 11).

Usage (from the repository root):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/warmup_experiment.py          # the full run
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/warmup_experiment.py --quick  # a smoke run

Three set-ups of one small Transformer (chapter 09) on the generated ``reverse`` task of
``scratchformer.data``, each trained at every learning rate of ``--lrs`` and for every seed:

* ``post-LN, no warmup``: ``norm_first=False``, the full learning rate from the first step;
* ``post-LN, warmup``: the same model, the learning rate rising linearly over ``--warmup`` steps;
* ``pre-LN, no warmup``: ``norm_first=True``, the full learning rate from the first step.

Everything else is equal. A seed fixes the initial weights (post-LN and pre-LN have the same
parameters, drawn in the same order, so one seed gives both the same weights) and the order of
the batches; the optimizer is Adam with the paper's beta = (0.9, 0.98) and eps = 1e-9; the loss
is plain cross-entropy over the non-pad target tokens (no label smoothing); no dropout; no
gradient clipping. After the warmup the learning rate stays constant: the schedule is
``warmup_cosine_schedule(optimizer, warmup, steps, min_ratio=1.0)``, and warmup = 1 means no
warmup (step 1 already runs at the full rate).

Recorded: the training loss of every step; the gradient norm over all parameters (before the
update) of the first ``--grad-steps`` steps, and its median and maximum over all steps; at the
end, the teacher-forced loss and token accuracy on the validation split. A run
whose loss becomes NaN or inf stops there (``nonfinite_step``). The results go to
``benchmarks/results/warmup_experiment.json`` (or ``--out``), which chapter 11 reads and plots.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from scratchformer import data
from scratchformer.model import Transformer, TransformerConfig
from scratchformer.schedules import warmup_cosine_schedule
from scratchformer.training import teacher_forcing

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "warmup_experiment.json"
SETUPS = {                       # name -> (norm_first, uses warmup)
    "post-LN, no warmup": (False, False),
    "post-LN, warmup": (False, True),
    "pre-LN, no warmup": (True, False),
}


def make_model(vocab_size: int, norm_first: bool, seed: int, args) -> Transformer:
    torch.manual_seed(seed)
    config = TransformerConfig(vocab_size, vocab_size, d_model=args.d_model, n_heads=args.heads,
                               n_encoder_layers=args.layers, n_decoder_layers=args.layers,
                               d_ff=args.d_ff, dropout=0.0, norm_first=norm_first)
    return Transformer(config)


def token_loss(model: Transformer, src: torch.Tensor, tgt: torch.Tensor):
    """Mean cross-entropy over the non-pad target tokens, and the number of correct ones."""
    tgt_in, labels = teacher_forcing(tgt)
    logits = model(src, tgt_in)                                  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=data.PAD_ID)
    real = labels != data.PAD_ID
    correct = ((logits.argmax(-1) == labels) & real).sum().item()
    return loss, correct, real.sum().item()


def train(task, setup: str, lr: float, seed: int, args) -> dict:
    norm_first, warms_up = SETUPS[setup]
    model = make_model(len(task.src_vocab), norm_first, seed, args)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-9)
    warmup = args.warmup if warms_up else 1
    scheduler = warmup_cosine_schedule(optimizer, warmup, args.steps, min_ratio=1.0)
    train_set = data.PairDataset(task.train, task.src_vocab, task.tgt_vocab)
    stream = data.BatchStream(train_set, args.batch_size, seed=seed)
    losses, grad_norms, nonfinite = [], [], None
    for step in range(1, args.steps + 1):
        src, tgt = stream.batch(step)
        loss, _, _ = token_loss(model, src, tgt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))  # measure only
        losses.append(loss.item())
        grad_norms.append(norm.item())
        if not (torch.isfinite(loss) and torch.isfinite(norm)):
            nonfinite = step
            break
        optimizer.step()
        scheduler.step()
    valid = data.PairDataset(task.valid, task.src_vocab, task.tgt_vocab)
    model.eval()
    total, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(valid), 250):
            src, tgt = data.collate([valid[i] for i in range(start, min(start + 250, len(valid)))])
            loss, right, n = token_loss(model, src, tgt)
            total, correct, count = total + loss.item() * n, correct + right, count + n
    return {"setup": setup, "norm_first": norm_first, "warmup": warmup, "lr": lr, "seed": seed,
            "loss": [float(f"{x:.4g}") for x in losses],
            "grad_norm": [float(f"{x:.4g}") for x in grad_norms[:args.grad_steps]],
            "grad_norm_median": float(f"{statistics.median(grad_norms):.4g}"),
            "grad_norm_max": float(f"{max(grad_norms):.4g}"),
            "nonfinite_step": nonfinite,
            "valid_loss": float(f"{total / count:.4g}"),
            "valid_token_accuracy": float(f"{correct / count:.4g}")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: 20 steps, 1 seed, 1 lr")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 5e-3, 7e-3, 1e-2, 2e-2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--warmup", type=int, default=100, help="warmup steps of 'post-LN, warmup'")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=3, help="encoder layers = decoder layers")
    p.add_argument("--d-ff", type=int, default=128)
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--grad-steps", type=int, default=100,
                   help="store the gradient norm of this many first steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    if args.quick:
        args.lrs, args.seeds, args.steps, args.warmup = args.lrs[-1:], args.seeds[:1], 20, 5
    if args.warmup > args.steps or min(args.steps, args.warmup, args.batch_size) < 1:
        p.error("need 1 <= --warmup <= --steps and a positive --batch-size")
    torch.set_num_threads(args.threads)
    task = data.make_task("reverse", args.n_train, seed=0)
    start, runs = time.perf_counter(), []
    for lr in args.lrs:
        for seed in args.seeds:
            for setup in SETUPS:
                t = time.perf_counter()
                run = train(task, setup, lr, seed, args)
                runs.append(run)
                tail = run["loss"][-20:]
                print(f"lr {lr:g} seed {seed} {setup:20s} loss {run['loss'][0]:.2f} -> "
                      f"{sum(tail) / len(tail):.3f} (last 20 steps), valid token accuracy "
                      f"{run['valid_token_accuracy']:.1%}, {time.perf_counter() - t:.0f} s",
                      flush=True)
    seconds = time.perf_counter() - start
    config = {k: v for k, v in vars(args).items() if k not in ("out", "quick")}
    result = {
        "command": " ".join(["python", "benchmarks/warmup_experiment.py", *sys.argv[1:]]),
        "config": config, "task": "reverse", "optimizer": "Adam(betas=(0.9, 0.98), eps=1e-9)",
        "torch": torch.__version__, "machine": platform.machine(),
        "threads": torch.get_num_threads(), "seconds": round(seconds),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result) + "\n", encoding="utf-8")
    print(f"{len(runs)} runs in {seconds:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
