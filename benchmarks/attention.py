"""Multi-head self-attention: our two paths against nn.MultiheadAttention and a bare SDPA module.

Usage (from the repository root):

    .venv/bin/python benchmarks/attention.py            # the full benchmark (about 2 minutes)
    .venv/bin/python benchmarks/attention.py --quick --out /tmp/a.json   # a smoke run (seconds)
    .venv/bin/python benchmarks/attention.py --device cuda --dtype bfloat16   # on a GPU

Four implementations of the same function, with the same weights, on the same inputs
x (B, T, D) with a key-padding mask (every row right-padded to a random length in [T/2, T]):

* ``explicit``: ``multihead.MultiHeadAttention(fused=False)``, chapter 02's softmax(QK^T/sqrt(d))V;
* ``fused``: ``multihead.MultiHeadAttention(fused=True)``, ``F.scaled_dot_product_attention``
  behind our input validation and the guard for queries with nothing to attend to;
* ``reference``: ``nn.MultiheadAttention(batch_first=True)`` with ``key_padding_mask``;
* ``sdpa``: the smallest module around ``F.scaled_dot_product_attention``: one packed input
  projection, ``F.scaled_dot_product_attention`` with a boolean mask, the output projection,
  no checks (a floor for the fused path).

Two modes: ``forward`` (eval mode under ``torch.no_grad()``, as in decoding, which lets
``nn.MultiheadAttention`` take its fused inference path) and ``forward_backward`` (training
mode, dropout 0: forward, the sum of the output, backward; gradients are set to None between
calls). Before timing, the script checks that all four give the same output. The ratio of an
implementation at length T is t_reference / t_implementation (above 1: faster than
``nn.MultiheadAttention``), the median over interleaved rounds (the order rotates every round),
each timed with ``torch.utils.benchmark.Timer.blocked_autorange``, which synchronises CUDA.
Results go to ``benchmarks/results/attention.json`` (or ``--out``); ``--quick`` writes a file
only with ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark
from _common import cpu_model, load, provenance, save_json
from einops import rearrange
from torch import nn

from scratchformer.multihead import MultiHeadAttention

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "attention.json"
IMPLEMENTATIONS = ("explicit", "fused", "reference", "sdpa")
MODES = ("forward", "forward_backward")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SDPAttention(nn.Module):
    """The bare minimum around ``F.scaled_dot_product_attention``: x (B, T, D), mask (B, 1, 1, T)
    boolean, True = may attend -> (B, T, D). Weights copied from ``ours``."""

    def __init__(self, ours: MultiHeadAttention):
        super().__init__()
        self.n_heads = ours.n_heads
        self.in_proj = nn.Linear(ours.d_model, 3 * ours.d_model)
        self.out_proj = nn.Linear(ours.d_model, ours.d_model)
        self.load_state_dict(ours.state_dict())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.in_proj(x), "b t (three h d) -> three b h t d", three=3,
                            h=self.n_heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)   # (B, H, T, Dh)
        return self.out_proj(rearrange(out, "b h t d -> b t (h d)"))


def build(args, device: torch.device, dtype: torch.dtype) -> dict[str, nn.Module]:
    """The four modules with our ``MultiHeadAttention``'s random weights (seeded)."""
    torch.manual_seed(args.seed)
    ours = MultiHeadAttention(args.d_model, args.heads, fused=True)
    explicit = MultiHeadAttention(args.d_model, args.heads, fused=False)
    explicit.load_state_dict(ours.state_dict())
    reference = nn.MultiheadAttention(args.d_model, args.heads, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(ours.in_proj.weight)
        reference.in_proj_bias.copy_(ours.in_proj.bias)
        reference.out_proj.weight.copy_(ours.out_proj.weight)
        reference.out_proj.bias.copy_(ours.out_proj.bias)
    modules = {"explicit": explicit, "fused": ours, "reference": reference,
               "sdpa": SDPAttention(ours)}
    return {name: m.to(device=device, dtype=dtype) for name, m in modules.items()}


def make_inputs(args, T: int, device, dtype, g: torch.Generator):
    """x (B, T, D) and the key-padding mask of every path: ``valid`` (B, T), True at the real
    tokens; each row's length is drawn from [T/2, T]."""
    x = torch.randn(args.batch, T, args.d_model, generator=g)
    lengths = torch.randint(max(1, T // 2), T + 1, (args.batch,), generator=g)
    valid = torch.arange(T)[None, :] < lengths[:, None]
    return x.to(device=device, dtype=dtype), valid.to(device)


def call(name: str, module: nn.Module, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """One self-attention call of implementation ``name``: (B, T, D) -> (B, T, D)."""
    if name == "reference":
        return module(x, x, x, key_padding_mask=~valid, need_weights=False)[0]
    mask = rearrange(valid, "b s -> b 1 1 s")                    # True = may attend
    if name == "sdpa":
        return module(x, mask)
    return module(x, x, x, mask)[0]


def make_fn(name: str, module: nn.Module, x, valid, mode: str):
    """The timed statement: a forward (eval, no grad) or a forward + backward (train)."""
    if mode == "forward":
        module.eval()

        def forward():
            with torch.no_grad():
                return call(name, module, x, valid)
        return forward
    module.train()
    xg = x.detach().clone().requires_grad_(True)

    def forward_backward():
        call(name, module, xg, valid).sum().backward()
        xg.grad = None
        for p in module.parameters():
            p.grad = None
    return forward_backward


def check_same_output(modules, x, valid) -> float:
    """All four implementations compute the same function (eval mode): the largest difference
    from the reference, at the real query positions (the padded ones are don't-care rows)."""
    with torch.no_grad():
        outs = {n: call(n, m.eval(), x, valid).float() for n, m in modules.items()}
    keep = valid[..., None]
    diff = max(((outs[n] - outs["reference"]) * keep).abs().max().item() for n in outs)
    tol = 1e-4 if x.dtype == torch.float32 else 5e-2
    assert diff < tol, f"the attention implementations disagree: max |diff| = {diff:.3g}"
    return diff


def measure(fn, threads: int, min_run_time: float, label: str):
    torch.set_num_threads(threads)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads,
                            label="attention", description=label, sub_label=f"{threads} thr")
    return timer.blocked_autorange(min_run_time=min_run_time)


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def run_length(args, modules, T: int, threads: int, mode: str, device, dtype) -> dict:
    """Interleaved rounds of the four implementations at one length, mode and thread count."""
    g = torch.Generator().manual_seed(args.seed + T)
    x, valid = make_inputs(args, T, device, dtype, g)
    fns = {n: make_fn(n, modules[n], x, valid, mode) for n in IMPLEMENTATIONS}
    for fn in fns.values():                                   # warm-up
        fn()
    times = {n: [] for n in IMPLEMENTATIONS}
    rounds = []
    for r in range(args.rounds):
        shift = r % len(IMPLEMENTATIONS)
        order = IMPLEMENTATIONS[shift:] + IMPLEMENTATIONS[:shift]
        before, medians = load(), {}
        for n in order:
            m = measure(fns[n], threads, args.min_run_time, n)
            times[n].extend(m.times)
            medians[n] = m.median
        rounds.append({"median_s": medians, "load_before": before, "load_after": load(),
                       "ratios": {n: medians["reference"] / medians[n] for n in IMPLEMENTATIONS}})
    summary = {}
    for n, values in times.items():
        q1, q3 = quartiles(values)
        summary[n] = {"median_s": statistics.median(values), "iqr_s": q3 - q1,
                      "n_blocks": len(values), "block_times_s": values}
    ratios = {n: statistics.median(r["ratios"][n] for r in rounds) for n in IMPLEMENTATIONS}
    spread = {n: [min(r["ratios"][n] for r in rounds), max(r["ratios"][n] for r in rounds)]
              for n in IMPLEMENTATIONS}
    print(f"  {threads} thr, {mode:16s} T = {T:4d}: " + ", ".join(
        f"{n} {summary[n]['median_s'] * 1e3:7.2f} ms ({ratios[n]:.2f}x)" for n in IMPLEMENTATIONS)
        + f" (load {rounds[0]['load_before'][0]:.2f})", flush=True)
    return {"ratios": ratios, "ratio_range": spread, "times": summary, "rounds": rounds}


def run(args) -> dict:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    modules = build(args, device, dtype)
    g = torch.Generator().manual_seed(args.seed)
    max_diff = max(check_same_output(modules, *make_inputs(args, T, device, dtype, g))
                   for T in args.lengths)
    results = {}
    for threads in args.threads:
        results[str(threads)] = {
            mode: {str(T): run_length(args, modules, T, threads, mode, device, dtype)
                   for T in args.lengths}
            for mode in args.modes}
    return {
        "benchmark": "attention",
        "description": "multi-head self-attention with a key-padding mask: ours (explicit and "
                       "fused paths), nn.MultiheadAttention (the reference) and a bare "
                       "F.scaled_dot_product_attention module; ratio = t_reference / t_path",
        "reference": "reference",
        "implementations": {
            "explicit": "scratchformer MultiHeadAttention(fused=False)",
            "fused": "scratchformer MultiHeadAttention(fused=True)",
            "reference": "torch.nn.MultiheadAttention(batch_first=True)",
            "sdpa": "in_proj + F.scaled_dot_product_attention + out_proj, no checks"},
        "modes": args.modes, "lengths": args.lengths, "threads": args.threads,
        "results": results,
        "config": {"d_model": args.d_model, "heads": args.heads, "batch": args.batch,
                   "padding": "right-padded keys, lengths uniform in [T/2, T]",
                   "dropout": 0.0, "device": args.device, "dtype": args.dtype,
                   "rounds": args.rounds, "min_run_time_s": args.min_run_time,
                   "seed": args.seed, "quick": args.quick},
        "max_abs_diff": max_diff,
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else cpu_model()),
        **provenance(),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: T 16 and 32, batch 2, d_model 32, 1 round, 0.02 s each")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="sequence lengths T (default 64 128 256 512)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--batch", type=int, default=None, help="sequences per batch (default 8)")
    p.add_argument("--d-model", dest="d_model", type=int, default=None, help="default 256")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument("--min-run-time", type=float, default=None,
                   help="seconds per measurement (blocked_autorange; default 0.5)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON file (default {DEFAULT_OUT.relative_to(HERE.parent)}; "
                        "--quick: none)")
    args = p.parse_args(argv)
    quick = {"lengths": [16, 32], "batch": 2, "d_model": 32, "rounds": 1, "min_run_time": 0.02}
    full = {"lengths": [64, 128, 256, 512], "batch": 8, "d_model": 256, "rounds": 3,
            "min_run_time": 0.5}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None and not args.quick:
        args.out = DEFAULT_OUT
    if min(args.threads) < 1 or args.rounds < 1 or args.min_run_time <= 0 \
            or min(args.lengths) < 2 or args.batch < 1:
        p.error("--threads, --rounds, --min-run-time, --batch must be positive, --lengths >= 2")
    if args.d_model % args.heads:
        p.error(f"--d-model {args.d_model} is not divisible by --heads {args.heads}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() "
                "is False); run on a GPU machine or use --device cpu")
    args.lengths = sorted(set(args.lengths))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    print(f"attention, ours vs nn.MultiheadAttention: lengths {args.lengths}, batch "
          f"{args.batch}, d_model {args.d_model}, {args.heads} heads, {args.device} "
          f"{args.dtype}, threads {args.threads}; torch {torch.__version__}, load {load()}",
          flush=True)
    result = run(args)
    result["seconds"] = time.perf_counter() - began
    print()
    for threads, per_mode in result["results"].items():
        for mode, per_length in per_mode.items():
            print(f"{threads} thread(s), {mode}: ratio t_reference / t_path per T")
            for T, r in per_length.items():
                print(f"  T = {T:>4}: " + ", ".join(f"{n} {r['ratios'][n]:.2f}"
                                                   for n in IMPLEMENTATIONS))
    print(f"load average at the end: {result['load_at_end']}")
    if args.out is not None:
        save_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
