"""Data hunger: a learning curve of the Transformer against a GRU seq2seq model.

Both models are trained on the same task with 3-4 training-set sizes, with the same budget:
the same steps, batches (``BatchStream``), loss (label-smoothed), optimizer and schedule
(``training.make_optimizer``: Adam, Noam warmup peaking at the recipe's rate) and a similar
number of parameters. The smaller training sets are prefixes of the larger ones, and every
size is scored on the same held-out test split (greedy exact match, ``training.evaluate``).

The GRU model encodes with chapter 05's ``RNNEncoder`` (bidirectional GRU) and decodes with a
GRU plus dot-product attention over the encoder states (Luong et al., 2015, "global attention",
without input feeding), so it provides ``forward(src, tgt_in) -> logits (B, T, V)`` and
``greedy_decode`` recomputes the prefix at every step, as it does for any such model.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/data_hunger.py --threads 1
    python benchmarks/data_hunger.py --fast        # a smoke run of a few seconds

Output (``--out``, default ``benchmarks/results/data_hunger.json``)::

    {
      "benchmark": "data_hunger",
      "task": "date",
      "sizes": [250, 1000, 4000, 16000],         # training-set sizes, ascending
      "n_test": 500,                              # held-out pairs, the same for every size
      "steps": 1000, "batch_size": 64, "seed": 0, # the budget, equal for both models
      "models": {
        "transformer": {
          "exact_match": [...],                   # per size, in [0, 1]
          "token_accuracy": [...],                # per size, teacher-forced, in [0, 1]
          "final_loss": [...],                    # per size, mean training loss of the last log window
          "seconds": [...],                       # per size, training + evaluation wall time
          "parameters": 238208
        },
        "gru": {... the same keys ...}
      },
      "config": {"transformer": {...},           # RECIPES[task], warmup <= steps / 5
                 "gru": {...}},
      "seconds": 512.3,                           # the whole run
      "command": "OMP_NUM_THREADS=1 python benchmarks/data_hunger.py --threads 1",
      "torch": "2.x", "threads": 1, "fast": false,
      "load_average": [2.1, 2.0, 1.9],            # os.getloadavg() at the start
      "load_average_end": [...],                  # ... and at the end
      "machine": "x86_64"                         # platform.machine()
    }
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from _common import ROOT, begin_run, fit_with_bar, write_results
from torch import nn
from tqdm.auto import tqdm

from scratchformer.baselines import RNNEncoder
from scratchformer.data import PAD_ID, BatchStream, PairDataset, make_task
from scratchformer.training import RECIPES, evaluate, model_from_recipe


class GRUSeq2Seq(nn.Module):
    """A GRU encoder-decoder with dot-product attention.

    ``forward(src (B, S), tgt_in (B, T)) -> logits (B, T, V_tgt)``; ids equal to ``pad_id``
    are padding (right-padded). The encoder is a bidirectional ``RNNEncoder`` (chapter 05);
    the decoder GRU starts from a projection of the mean encoder state, and at every
    position attends to the encoder states: ``c_t = softmax(h_t M^T) M``,
    ``logits_t = W_out tanh(W_c [h_t; c_t])``.
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, d_model: int = 128,
                 dropout: float = 0.1, pad_id: int = PAD_ID):
        super().__init__()
        self.pad_id = pad_id
        self.src_embed = nn.Embedding(src_vocab_size, d_model)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d_model)
        self.encoder = RNNEncoder(d_model, n_layers=1, cell="gru", bidirectional=True)
        self.bridge = nn.Linear(d_model, d_model)
        self.decoder = nn.GRU(d_model, d_model, batch_first=True)
        self.combine = nn.Linear(2 * d_model, d_model)
        self.generator = nn.Linear(d_model, tgt_vocab_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        keep = src != self.pad_id                                        # (B, S)
        memory = self.encoder(self.dropout(self.src_embed(src)), keep)   # (B, S, D)
        mean = memory.sum(1) / keep.sum(1, keepdim=True).clamp(min=1)    # (B, D), pads are 0
        h0 = torch.tanh(self.bridge(mean)).unsqueeze(0)                  # (1, B, D)
        out, _ = self.decoder(self.dropout(self.tgt_embed(tgt_in)), h0)  # (B, T, D)
        scores = out @ memory.transpose(1, 2)                            # (B, T, S)
        scores = scores.masked_fill(~keep.unsqueeze(1), float("-inf"))
        context = scores.softmax(-1) @ memory                            # (B, T, D)
        h = torch.tanh(self.combine(torch.cat([out, context], dim=-1)))  # (B, T, D)
        return self.generator(self.dropout(h))                           # (B, T, V)




def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default="date", choices=("copy", "reverse", "de2num", "date"))
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="training-set sizes (default: 250 1000 4000 16000; --fast: 100 400)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per run, equal for both models (default 1000; --fast 30)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-test", type=int, default=None, help="held-out pairs (default 500; --fast 100)")
    p.add_argument("--gru-d-model", type=int, default=128,
                   help="GRU width (128: about the Transformer recipe's parameter count)")
    p.add_argument("--models", nargs="+", default=["transformer", "gru"],
                   choices=("transformer", "gru"), help="which models to train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--fast", action="store_true", help="a smoke run of a few seconds")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/data_hunger.json")
    args = p.parse_args(argv)
    args.sizes = args.sizes or ([100, 400] if args.fast else [250, 1000, 4000, 16000])
    args.steps = args.steps or (30 if args.fast else 1000)
    args.n_test = args.n_test or (100 if args.fast else 500)
    if min(args.sizes) < 1 or args.steps < 1 or args.n_test < 1 or args.batch_size < 1:
        p.error("sizes, --steps, --n-test and --batch-size must be positive")
    args.sizes = sorted(set(args.sizes))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = begin_run(args.threads)
    recipe = dict(RECIPES[args.task], batch_size=args.batch_size, steps=args.steps)
    recipe["warmup"] = min(recipe["warmup"], max(args.steps // 5, 1))
    gru_config = {"d_model": args.gru_d_model, "dropout": recipe["dropout"], "n_layers": 1,
                  "encoder": "RNNEncoder(gru, bidirectional)", "attention": "dot-product"}
    builders = {
        "transformer": lambda d: model_from_recipe(recipe, len(d.src_vocab), len(d.tgt_vocab)),
        "gru": lambda d: GRUSeq2Seq(len(d.src_vocab), len(d.tgt_vocab), args.gru_d_model,
                                    recipe["dropout"]),
    }
    builders = {name: builders[name] for name in args.models}
    results = {name: {"exact_match": [], "token_accuracy": [], "final_loss": [], "seconds": [],
                      "parameters": None} for name in builders}
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    began = time.perf_counter()
    bar = tqdm(total=len(args.sizes) * len(builders) * args.steps, unit="step",
               dynamic_ncols=True)
    for size in args.sizes:
        data = make_task(args.task, size, n_valid=0, n_test=args.n_test, seed=args.seed)
        stream = BatchStream(PairDataset(data.train, data.src_vocab, data.tgt_vocab),
                             args.batch_size, seed=args.seed)
        for name, build in builders.items():
            bar.set_description(f"{name} n={size}")
            torch.manual_seed(args.seed)
            model = build(data)
            tick = time.perf_counter()
            history = fit_with_bar(model, recipe, stream, bar, steps=args.steps,
                                   log_every=min(50, args.steps))
            scores = evaluate(model, data.test, data.src_vocab, data.tgt_vocab)
            r = results[name]
            r["exact_match"].append(scores["exact_match"])
            r["token_accuracy"].append(scores["token_accuracy"])
            r["final_loss"].append(history[-1]["loss"])
            r["seconds"].append(time.perf_counter() - tick)
            r["parameters"] = sum(p.numel() for p in model.parameters())
            tqdm.write(f"{name:11s} n_train={size:6d}  exact match {scores['exact_match']:.3f}  "
                       f"token acc {scores['token_accuracy']:.3f}  "
                       f"loss {history[-1]['loss']:.3f}  {r['seconds'][-1]:.0f} s")
    bar.close()
    out = {
        "benchmark": "data_hunger", "task": args.task, "sizes": args.sizes,
        "n_test": args.n_test, "steps": args.steps, "batch_size": args.batch_size,
        "seed": args.seed, "models": results,
        "config": {"transformer": {k: v for k, v in recipe.items()
                                   if k not in ("n_train", "eval_every", "log_every")},
                   "gru": gru_config},
    }
    return write_results(args.out, out, began=began, command=command, load=load,
                         fast=args.fast)


if __name__ == "__main__":
    main()
