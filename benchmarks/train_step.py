"""One training step of scratchformer's Transformer against torch.nn.Transformer, on the CPU.

Usage (from the repository root):

    .venv/bin/python benchmarks/train_step.py            # the full benchmark (a few minutes)
    .venv/bin/python benchmarks/train_step.py --quick    # a smoke run (seconds)
    make bench

Both models get the same embeddings (scratchformer's ScaledEmbedding), the same sinusoidal
positions with dropout, the same tied generator and the same loss (cross-entropy with label
smoothing 0.1, padding ignored), the same weights and the same inputs: only the encoder-decoder
core differs (ours, or ``nn.Transformer(batch_first=True)`` with the final LayerNorms that a
post-LN stack does not have removed, so the parameter counts are equal; asserted). A step is
forward, loss, backward, ``Adam.step`` and ``zero_grad``, in training mode (dropout 0.1).

The two models are measured in the same process, interleaved (ours/reference, then
reference/ours, for several rounds), at each thread count (``torch.set_num_threads``), with
``torch.utils.benchmark.Timer.blocked_autorange``. The throughput ratio is
ours / reference in tokens per second, i.e. t_reference / t_ours; its spread is taken over the
rounds (each round pairs one measurement of each model taken back to back). The results go to
``benchmarks/results/train_step.json`` (or ``--out``); a ``--quick`` run writes a file only
with ``--out``, so a smoke run never replaces measured results.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark
from _common import load, provenance, save_json
from torch import nn

from scratchformer import interop
from scratchformer.model import Transformer, TransformerConfig

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "train_step.json"
PAD_ID = 0


class Reference(nn.Module):
    """``nn.Transformer`` inside the same embeddings, positions and generator as ``model``.

    The core is ``interop.transformer_core_to_torch(model)`` (a copy of ``model``'s encoder and
    decoder weights); embeddings, positions and the tied generator are copies of ``model``'s.
    Masks are built the documented way, boolean like the key-padding masks (True = may NOT
    attend; a float causal mask next to boolean padding masks is deprecated), with
    ``tgt_is_causal=True``.
    """

    def __init__(self, model: Transformer):
        super().__init__()
        self.src_embed = copy.deepcopy(model.src_embed)
        self.tgt_embed = copy.deepcopy(model.tgt_embed)
        self.src_pos = copy.deepcopy(model.src_pos)
        self.tgt_pos = copy.deepcopy(model.tgt_pos)
        self.generator = copy.deepcopy(model.generator)
        if model.config.tie_embeddings:
            self.generator.weight = self.tgt_embed.weight
        with warnings.catch_warnings():          # nested-tensor notice of nn.TransformerEncoder
            warnings.simplefilter("ignore", UserWarning)
            self.core = interop.transformer_core_to_torch(model)
        self.pad_id = model.config.pad_id

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        src_pad, tgt_pad = src == self.pad_id, tgt_in == self.pad_id   # True = padding
        x = self.src_pos(self.src_embed(src))
        y = self.tgt_pos(self.tgt_embed(tgt_in))
        T = tgt_in.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=y.device).triu(1)  # future
        h = self.core(x, y, tgt_mask=causal, src_key_padding_mask=src_pad,
                      tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad,
                      tgt_is_causal=True)
        return self.generator(h)


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss of both models: label-smoothed cross-entropy over the non-pad labels."""
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=PAD_ID,
                           label_smoothing=0.1)


def make_inputs(args, g: torch.Generator):
    """src (B, L), tgt_in (B, L) and labels (B, L): random ids, right-padded to random lengths
    in [L/2, L] (src) and [L/2, L] + 1 (tgt, which starts with <s> = 1)."""
    B, L, V = args.batch, args.length, args.vocab

    def padded(length: int, lengths: torch.Tensor) -> torch.Tensor:
        ids = torch.randint(4, V, (B, length), generator=g)
        return ids.masked_fill(torch.arange(length)[None, :] >= lengths[:, None], PAD_ID)

    src = padded(L, torch.randint(max(1, L // 2), L + 1, (B,), generator=g))
    tgt = padded(L + 1, torch.randint(max(1, L // 2), L + 1, (B,), generator=g) + 1)
    tgt[:, 0] = 1                                                       # <s>
    return src, tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())          # a tied weight counted once


def build(args):
    torch.manual_seed(args.seed)
    config = TransformerConfig(args.vocab, args.vocab, d_model=args.d_model, n_heads=args.heads,
                               n_encoder_layers=args.layers, n_decoder_layers=args.layers,
                               d_ff=args.d_ff, dropout=args.dropout, pad_id=PAD_ID)
    ours = Transformer(config)
    reference = Reference(ours)
    n_ours, n_ref = parameter_count(ours), parameter_count(reference)
    assert n_ours == n_ref, f"parameter counts differ: ours {n_ours}, reference {n_ref}"
    return config, ours, reference


def check_same_function(ours, reference, src, tgt_in) -> float:
    """Both models compute the same logits in eval mode (same weights): the largest difference."""
    ours.eval(), reference.eval()
    with torch.no_grad(), warnings.catch_warnings():     # eval: nn.Transformer's fast path
        warnings.simplefilter("ignore", UserWarning)
        diff = (ours(src, tgt_in) - reference(src, tgt_in)).abs().max().item()
    ours.train(), reference.train()
    assert diff < 1e-3, f"the two models disagree in eval mode: max |diff| = {diff:.3g}"
    return diff


def make_step(model, src, tgt_in, labels):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        loss = loss_fn(model(src, tgt_in), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


TIMERS = {"wall": time.perf_counter, "process": time.process_time}


def cuda_wall() -> float:
    """Elapsed time after waiting for the GPU's queued work (CUDA runs asynchronously)."""
    torch.cuda.synchronize()
    return time.perf_counter()


def clock_of(clock: str, device: str):
    """The timer function: ``TIMERS[clock]`` on the CPU, the synchronising wall clock on CUDA."""
    return cuda_wall if device.startswith("cuda") else TIMERS[clock]


def measure(step, threads: int, min_run_time: float, label: str, clock: str = "wall",
            device: str = "cpu"):
    torch.set_num_threads(threads)
    timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=threads,
                            timer=clock_of(clock, device), label="train step",
                            description=label,
                            sub_label=f"{threads} thr")
    return timer.blocked_autorange(min_run_time=min_run_time)




def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def run(args) -> dict:
    config, ours, reference = build(args)
    ours, reference = ours.to(args.device), reference.to(args.device)
    g = torch.Generator().manual_seed(args.seed)
    src, tgt_in, labels = (t.to(args.device) for t in make_inputs(args, g))
    max_diff = check_same_function(ours, reference, src, tgt_in)
    steps = {"ours": make_step(ours, src, tgt_in, labels),
             "reference": make_step(reference, src, tgt_in, labels)}
    tokens = int(labels.numel())                      # target positions per step, B * L
    for step in steps.values():                       # warm-up: allocator, Adam state
        torch.set_num_threads(max(args.threads))
        for _ in range(args.warmup):
            step()
    per_thread = {}
    for threads in args.threads:
        times = {"ours": [], "reference": []}
        rounds = []
        for r in range(args.rounds):
            order = ["ours", "reference"] if r % 2 == 0 else ["reference", "ours"]
            before = load()
            medians = {}
            for name in order:
                m = measure(steps[name], threads, args.min_run_time, name, args.timer,
                            args.device)
                times[name].extend(m.times)
                medians[name] = m.median
            ratio = medians["reference"] / medians["ours"]
            rounds.append({"ours_median_s": medians["ours"],
                           "reference_median_s": medians["reference"],
                           "ratio": ratio, "load_before": before, "load_after": load()})
            print(f"  {threads} thread(s), round {r + 1}/{args.rounds}: ours "
                  f"{medians['ours'] * 1e3:8.1f} ms, nn.Transformer "
                  f"{medians['reference'] * 1e3:8.1f} ms, ratio {ratio:.3f} "
                  f"(load {before[0]:.2f})", flush=True)
        ratios = [r["ratio"] for r in rounds]
        summary = {}
        for name, values in times.items():
            q1, q3 = quartiles(values)
            median = statistics.median(values)
            summary[name] = {"median_s": median, "iqr_s": q3 - q1, "n_blocks": len(values),
                             "tokens_per_s": tokens / median, "block_times_s": values}
        r_lo, r_hi = quartiles(ratios)
        per_thread[str(threads)] = {
            "ratio": statistics.median(ratios),              # median over the paired rounds
            "ratio_pooled": summary["reference"]["median_s"] / summary["ours"]["median_s"],
            "ratio_iqr": [r_lo, r_hi], "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ours": summary["ours"], "reference": summary["reference"], "rounds": rounds,
        }
    return {
        "benchmark": "train_step",
        "description": "ours / nn.Transformer throughput (tokens/s) of one training step: "
                       "forward, loss, backward, Adam step, zero_grad; same embeddings, "
                       "positions, generator, loss, weights and inputs",
        "ratios": {t: v["ratio"] for t, v in per_thread.items()},
        "threads": args.threads,
        "results": per_thread,
        "config": {"d_model": args.d_model, "heads": args.heads, "encoder_layers": args.layers,
                   "decoder_layers": args.layers, "d_ff": args.d_ff, "batch": args.batch,
                   "length": args.length, "vocab": args.vocab, "dropout": args.dropout,
                   "norm_first": config.norm_first, "tokens_per_step": tokens,
                   "parameters": parameter_count(ours), "optimizer": "Adam(lr=1e-4)",
                   "loss": "cross_entropy(label_smoothing=0.1, ignore_index=pad)",
                   "rounds": args.rounds, "min_run_time_s": args.min_run_time,
                   "timer": args.timer, "device": args.device,
                   "warmup_steps": args.warmup, "seed": args.seed, "quick": args.quick},
        "eval_max_abs_diff": max_diff,
        **provenance(),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round, 0.05 s per measurement, 1 warm-up step")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 6)")
    p.add_argument("--min-run-time", type=float, default=None,
                   help="seconds per measurement (blocked_autorange; default 4)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per model (default 3)")
    p.add_argument("--timer", choices=sorted(TIMERS), default="wall",
                   help="wall: elapsed time (the throughput; default). process: this process's "
                        "CPU time, steadier on a shared machine at 1 thread, but at 2+ threads "
                        "it adds up the threads' time (spinning included): not a throughput")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=3, help="encoder layers = decoder layers")
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=32, help="source and target length")
    p.add_argument("--vocab", type=int, default=1000, help="source and target vocabulary")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--device", default="cpu",
                   help="cpu (default) or cuda (timed with a synchronising wall clock)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON file (default {DEFAULT_OUT.relative_to(HERE.parent)}; "
                        "--quick: none)")
    args = p.parse_args(argv)
    quick = {"rounds": 1, "min_run_time": 0.05, "warmup": 1}
    full = {"rounds": 6, "min_run_time": 4.0, "warmup": 3}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None and not args.quick:
        args.out = DEFAULT_OUT
    if min(args.threads) < 1 or args.rounds < 1 or args.min_run_time <= 0:
        p.error("--threads, --rounds and --min-run-time must be positive")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() "
                "is False); run on a GPU machine or use --device cpu")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"train step, ours vs nn.Transformer: d_model {args.d_model}, {args.heads} heads, "
          f"{args.layers}+{args.layers} layers, d_ff {args.d_ff}, batch {args.batch}, length "
          f"{args.length}, vocab {args.vocab}, dropout {args.dropout}; torch {torch.__version__}, "
          f"load {load()}", flush=True)
    result = run(args)
    print()
    for threads, r in result["results"].items():
        print(f"{threads} thread(s): ours {r['ours']['tokens_per_s']:9.0f} tok/s, nn.Transformer "
              f"{r['reference']['tokens_per_s']:9.0f} tok/s; ratio ours/reference "
              f"{r['ratio']:.3f} (rounds: IQR {r['ratio_iqr'][0]:.3f}-{r['ratio_iqr'][1]:.3f}, "
              f"range {r['ratio_min']:.3f}-{r['ratio_max']:.3f})")
    print(f"load average at the end: {result['load_at_end']}")
    if args.out is not None:
        save_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
