"""The copy mechanism: a plain Transformer against a pointer-generator on word templates whose
test names and numbers never occur in training (chapter 15).

Data: ``tips.make_template_task`` (templates such as "please call A at N" -> "bitte A unter N
anrufen"; the test split's names and numbers are disjoint from the training ones) and one
word vocabulary built from the training pairs (words seen at least ``--min-count`` times; every
other word is ``<unk>``). Both models have the same Transformer inside, the same batches (the
plain one reads and writes ``<unk>`` where the pointer-generator has extended ids), the same
optimizer, schedule and steps, and no label smoothing (a smoothed target over an extended
vocabulary whose extra slots differ per sentence is not well defined; both arms use epsilon 0).
Scored by greedy exact match on the test split (unseen names) and on a validation split drawn
from the training names.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/tips_copy.py --threads 1
    python benchmarks/tips_copy.py --fast

Output (``--out``, default ``benchmarks/results/tips_copy.json``)::

    {"benchmark": "tips_copy", "n_train": 3000, "vocab_size": ..., "steps": 600,
     "seeds": [0, 1, 2],
     "models": {"transformer": {"test_exact_match": [per seed], "valid_exact_match": [...],
                                "examples": [[source, target, output], ...] (first seed),
                                "seconds": [...], "parameters": ...},
                "pointer_generator": {... the same keys ...}},
     "config": {...}, "seconds": ..., "command": ..., "torch": ..., "load_average": ...}
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from _common import ROOT, begin_run, write_results

from scratchformer import tips
from scratchformer.model import Transformer, TransformerConfig
from scratchformer.training import fit, make_optimizer

CONFIG = dict(d_model=64, heads=4, layers=2, d_ff=128, dropout=0.1, lr=3e-3, warmup=50,
              batch_size=64, norm_first=True)


def build(kind: str, vocab_size: int, c: dict):
    config = TransformerConfig(vocab_size, vocab_size, d_model=c["d_model"],
                               n_heads=c["heads"], n_encoder_layers=c["layers"],
                               n_decoder_layers=c["layers"], d_ff=c["d_ff"],
                               dropout=c["dropout"], norm_first=c["norm_first"])
    return tips.PointerGenerator(config) if kind == "pointer_generator" else Transformer(config)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--min-count", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="default 600; --fast 20")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--fast", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/tips_copy.json")
    args = p.parse_args(argv)
    args.steps = args.steps or (20 if args.fast else 600)
    args.seeds = args.seeds or ([0] if args.fast else [0, 1, 2])
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = begin_run(args.threads)
    task = tips.make_template_task(args.n_train, seed=0)
    vocab = tips.WordVocab([f"{s} {t}" for s, t in task.train], args.min_count)
    train = tips.encode_pairs(task.train, vocab)
    valid = tips.encode_pairs(task.valid, vocab)
    test = tips.encode_pairs(task.test, vocab)
    V = len(vocab)
    models = {k: {"test_exact_match": [], "valid_exact_match": [], "seconds": [],
                  "final_loss": []} for k in ("transformer", "pointer_generator")}
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    began = time.perf_counter()
    recipe = dict(CONFIG)
    for seed in args.seeds:
        for kind, r in models.items():
            torch.manual_seed(seed)
            model = build(kind, V, recipe)
            optimizer, scheduler = make_optimizer(model, recipe)
            extended = kind == "pointer_generator"
            tick = time.perf_counter()
            history = fit(model, optimizer, scheduler,
                          lambda step, e=extended, s=seed: [tips.template_batch(
                              train, step, recipe["batch_size"], V, extended=e, seed=s)],
                          steps=args.steps, epsilon=0.0, log_every=max(args.steps // 6, 1),
                          progress=False, loss_fn=tips.pointer_loss if extended else None)
            test_em, outputs = tips.template_exact_match(model, test, vocab, extended)
            valid_em, _ = tips.template_exact_match(model, valid, vocab, extended)
            r["test_exact_match"].append(test_em)
            r["valid_exact_match"].append(valid_em)
            r["seconds"].append(time.perf_counter() - tick)
            r["final_loss"].append(history[-1]["loss"])
            r["parameters"] = sum(p.numel() for p in model.parameters())
            if "examples" not in r:
                r["examples"] = [[s, t, o] for (s, t), o in zip(task.test[:8], outputs)]
            print(f"{kind:18s} seed {seed}  test exact match {test_em:.3f}  "
                  f"valid {valid_em:.3f}  loss {history[-1]['loss']:.3f}  "
                  f"{r['seconds'][-1]:.0f} s", flush=True)
    out = {"benchmark": "tips_copy", "n_train": args.n_train, "n_valid": len(task.valid),
           "n_test": len(task.test), "min_count": args.min_count, "vocab_size": V,
           "steps": args.steps, "seeds": args.seeds, "models": models, "config": recipe,
           "train_source_unknown_share": sum(int((s >= V).sum()) for s, _, _ in train)
           / sum(len(s) for s, _, _ in train)}
    return write_results(args.out, out, began=began, command=command, load=load,
                         fast=args.fast)


if __name__ == "__main__":
    main()
