"""Peak memory of one training step: scratchformer's Transformer against torch.nn.Transformer.

Usage (from the repository root):

    .venv/bin/python benchmarks/memory.py             # the full benchmark (under a minute)
    .venv/bin/python benchmarks/memory.py --quick --out /tmp/m.json   # a smoke run (seconds)
    .venv/bin/python benchmarks/memory.py --device cuda               # on a GPU

The two models are those of ``train_step.py`` (same configuration, same weights through
``scratchformer.interop``, same embeddings, positions, generator and loss; see there), at each
sequence length of ``--lengths``. A step is forward, loss, backward, ``Adam.step()`` and
``zero_grad(set_to_none=True)``, in training mode, after warm-up steps so that Adam's state
already exists. **Peak memory of a step** = the highest amount of tensor memory allocated at
any moment during the step, minus what was allocated when it began (parameters and Adam state,
which both models hold equally): activations kept for the backward pass, gradients and
temporaries.

How it is measured:

* **CPU**: PyTorch's CPU allocator keeps no cache, so every tensor allocation and free is a call
  that ``torch.profiler.profile(profile_memory=True)`` records with its size and time. Sorting
  those records by time and adding them up gives the allocated memory at every moment; its
  maximum is the peak. The script checks the method first on allocations of known sizes
  (4 MB, 8 MB, free the 4 MB, 2 MB, ...: the peak must be exactly 12 MB) and stores the result.
* **CUDA**: ``torch.cuda.max_memory_allocated()`` after ``torch.cuda.reset_peak_memory_stats()``.

The ratio is ours / reference (below 1: ours needs less). Results go to
``benchmarks/results/memory.json`` (or ``--out``); ``--quick`` writes a file only with ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import train_step
from _common import cpu_model, provenance, save_json
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "memory.json"
MB = 1_000_000


def profiled_peak(fn) -> tuple[int, int]:
    """``(peak, end)``: the highest tensor memory in bytes allocated on the CPU at any moment
    while ``fn()`` runs, and what is still allocated when it returns, both relative to its
    start, from the allocation records of ``torch.profiler`` (``profile_memory=True``)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                         if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    except AttributeError as error:         # a torch release without these records
        raise SystemExit(f"memory.py: this torch ({torch.__version__}) does not expose the "
                         f"profiler's allocation records ({error}); use --device cuda or "
                         "another torch release") from None
    current = peak = 0
    for _, nbytes in records:
        current += nbytes
        peak = max(peak, current)
    return peak, current


def known_allocations() -> torch.Tensor:
    """Allocate 4 MB, then 8 MB (12 MB held), free the 4 MB, allocate 2 MB (10 MB), free both,
    allocate 1 MB and return it: the peak is 12 MB, 1 MB is still held at the end."""
    a = torch.empty(4 * MB, dtype=torch.uint8)
    b = torch.empty(8 * MB, dtype=torch.uint8)
    del a
    c = torch.empty(2 * MB, dtype=torch.uint8)
    del b, c
    return torch.empty(MB, dtype=torch.uint8)


def check_method() -> dict:
    """The profiler-based peak on known allocations: it must be exactly 12 MB, 1 MB kept."""
    kept = []
    peak, end = profiled_peak(lambda: kept.append(known_allocations()))
    return {"expected_peak_bytes": 12 * MB, "measured_peak_bytes": peak,
            "expected_end_bytes": MB, "measured_end_bytes": end}


def step_peak(step, device: torch.device) -> int:
    """Peak bytes allocated during one ``step()`` above what was allocated at its start."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return profiled_peak(step)[0]


def persistent_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.parameters())


def run_length(args, length: int, device: torch.device) -> dict:
    args.length = length
    config, ours, reference = train_step.build(args)
    g = torch.Generator().manual_seed(args.seed)
    src, tgt_in, labels = (t.to(device) for t in train_step.make_inputs(args, g))
    models = {"ours": ours.to(device), "reference": reference.to(device)}
    steps = {n: train_step.make_step(m, src, tgt_in, labels) for n, m in models.items()}
    for step in steps.values():                     # Adam's state, allocator warm-up
        for _ in range(args.warmup):
            step()
    peaks = {n: [step_peak(steps[n], device) for _ in range(args.repeats)] for n in steps}
    row = {n: {"peak_bytes": max(v), "peak_bytes_all": v,
               "parameter_bytes": persistent_bytes(models[n])} for n, v in peaks.items()}
    row["ratio"] = row["ours"]["peak_bytes"] / row["reference"]["peak_bytes"]
    row["tokens_per_step"] = int(labels.numel())
    print(f"  length {length:4d}: ours {row['ours']['peak_bytes'] / MB:8.1f} MB, nn.Transformer "
          f"{row['reference']['peak_bytes'] / MB:8.1f} MB, ratio {row['ratio']:.3f}", flush=True)
    return row


def run(args) -> dict:
    device = torch.device(args.device)
    method = check_method() if device.type == "cpu" else None
    if method is not None and (method["measured_peak_bytes"] != method["expected_peak_bytes"]
                               or method["measured_end_bytes"] != method["expected_end_bytes"]):
        raise SystemExit(f"memory.py: the profiler's allocation records do not add up on known "
                         f"allocations ({method}); the CPU peak cannot be trusted here")
    results = {str(n): run_length(args, n, device) for n in args.lengths}
    return {
        "benchmark": "memory",
        "description": "peak tensor memory allocated during one training step (forward, loss, "
                       "backward, Adam step, zero_grad) above the memory held at its start; "
                       "ours against nn.Transformer, same configuration and weights; "
                       "ratio = ours / reference",
        "method": ("torch.profiler profile_memory=True: allocation records summed in time "
                   "order (CPU allocator, no cache)" if device.type == "cpu" else
                   "torch.cuda.max_memory_allocated after reset_peak_memory_stats"),
        "method_check": method,
        "ratios": {n: r["ratio"] for n, r in results.items()},
        "lengths": args.lengths, "results": results,
        "config": {"d_model": args.d_model, "heads": args.heads, "encoder_layers": args.layers,
                   "decoder_layers": args.layers, "d_ff": args.d_ff, "batch": args.batch,
                   "vocab": args.vocab, "dropout": args.dropout, "device": args.device,
                   "warmup_steps": args.warmup, "repeats": args.repeats, "seed": args.seed,
                   "optimizer": "Adam(lr=1e-4)", "quick": args.quick},
        "threads": torch.get_num_threads(),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else cpu_model()),
        **provenance(),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: a tiny model, lengths 6 and 12, 1 warm-up step")
    p.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="source and target lengths (default 32 128)")
    p.add_argument("--d-model", dest="d_model", type=int, default=None, help="default 256")
    p.add_argument("--heads", type=int, default=None, help="default 4")
    p.add_argument("--layers", type=int, default=None, help="encoder = decoder layers (3)")
    p.add_argument("--d-ff", dest="d_ff", type=int, default=None, help="default 1024")
    p.add_argument("--batch", type=int, default=None, help="default 32")
    p.add_argument("--vocab", type=int, default=None, help="default 1000")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=2, help="steps before measuring (default 2)")
    p.add_argument("--repeats", type=int, default=2, help="measured steps per model (max kept)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON file (default {DEFAULT_OUT.relative_to(HERE.parent)}; "
                        "--quick: none)")
    args = p.parse_args(argv)
    quick = {"lengths": [6, 12], "d_model": 16, "heads": 2, "layers": 1, "d_ff": 32,
             "batch": 4, "vocab": 20}
    full = {"lengths": [32, 128], "d_model": 256, "heads": 4, "layers": 3, "d_ff": 1024,
            "batch": 32, "vocab": 1000}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None and not args.quick:
        args.out = DEFAULT_OUT
    if min(args.lengths) < 2 or args.batch < 1 or args.repeats < 1 or args.warmup < 1:
        p.error("--lengths must be >= 2; --batch, --repeats and --warmup positive")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() "
                "is False); run on a GPU machine or use --device cpu")
    args.lengths = sorted(set(args.lengths))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    print(f"peak memory of a training step, ours vs nn.Transformer: lengths {args.lengths}, "
          f"batch {args.batch}, d_model {args.d_model}, {args.device}; torch "
          f"{torch.__version__}", flush=True)
    result = run(args)
    result["seconds"] = time.perf_counter() - began
    if result["method_check"]:
        print(f"method check: known allocations peak "
              f"{result['method_check']['measured_peak_bytes'] / MB:.1f} MB (expected "
              f"{result['method_check']['expected_peak_bytes'] / MB:.1f} MB)")
    print("ratio ours / nn.Transformer: " + ", ".join(
        f"length {n}: {r:.3f}" for n, r in result["ratios"].items()))
    if args.out is not None:
        save_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
