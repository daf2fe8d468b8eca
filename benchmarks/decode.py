"""Greedy decoding with the key/value cache of chapter 13 against recomputing the whole prefix.

Usage (from the repository root):

    .venv/bin/python benchmarks/decode.py                 # the full benchmark (a few minutes)
    .venv/bin/python benchmarks/decode.py --threads 1     # one thread only
    .venv/bin/python benchmarks/decode.py --quick --out /tmp/d.json   # a smoke run (seconds)

The model has the size of ``training.RECIPES["de2num"]`` (d_model 64, 4 heads, 2 encoder and 2
decoder layers, d_ff 256, sinusoidal positions, pre-LN) and the de2num task's vocabularies; its
weights are random (training changes no timing). The sources are the first ``--batch`` held-out
de2num sources (German number words, right-padded). Both variants run
``decoding.greedy_decode(model, src, max_len=n, use_cache=...)`` for n in ``--lengths``; every
row must run all n steps, so the end-of-sequence id given to the decoder is one the model
cannot produce: ``eos_id = len(tgt_vocab)``, one past the last logit (argmax over the
vocabulary never returns it). Before timing, the script checks that both variants return the
same (B, n) tokens.

The two variants are measured in the same process, interleaved (cached/recomputed, then
recomputed/cached, for several rounds), at each thread count, with
``torch.utils.benchmark.Timer.blocked_autorange``. The speed-up at length n is
t_recomputed / t_cached, the median over the rounds. The slope of log t against log n (least
squares over the lengths) tells the growth: about 1 for O(n), 2 for O(n^2). Results go to
``benchmarks/results/decode.json`` and the plot to ``benchmarks/results/decode.png`` (or
``--out`` / ``--plot``); a ``--quick`` run writes files only when they are given.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark
from _common import load, provenance, save_json

from scratchformer import data, decoding, training

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "decode.json"
DEFAULT_PLOT = HERE / "results" / "decode.png"
VARIANTS = ("cached", "recomputed")


def build(args):
    """The de2num-sized model (random weights, eval mode), its sources (B, S) and the never
    produced end-of-sequence id."""
    task = data.make_task("de2num", 500, n_valid=max(args.batch, 50), n_test=10, seed=0)
    recipe = dict(training.RECIPES["de2num"])
    for key in ("d_model", "heads", "layers", "d_ff"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    torch.manual_seed(args.seed)
    model = training.model_from_recipe(recipe, len(task.src_vocab), len(task.tgt_vocab))
    model.eval()
    rows = [torch.tensor(task.src_vocab.encode(src, eos=True)) for src, _ in task.valid]
    rows = rows[:args.batch]
    src = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True,
                                          padding_value=task.src_vocab.pad_id)
    never = len(task.tgt_vocab)          # one past the last logit: argmax never returns it
    return task, recipe, model.to(args.device), src.to(args.device), never


def decode_fn(model, src, n: int, eos_id: int, use_cache: bool):
    def run():
        return decoding.greedy_decode(model, src, max_len=n, eos_id=eos_id, use_cache=use_cache)
    return run


def check_same_tokens(model, src, n: int, eos_id: int) -> None:
    """Both variants give the same tokens, and every row ran all n steps."""
    cached = decode_fn(model, src, n, eos_id, True)()
    recomputed = decode_fn(model, src, n, eos_id, False)()
    assert cached.shape == recomputed.shape == (src.shape[0], n), (cached.shape, n)
    assert torch.equal(cached, recomputed), f"cached and recomputed tokens differ at n = {n}"


TIMERS = {"wall": time.perf_counter, "process": time.process_time}


def cuda_wall() -> float:
    """Elapsed time after waiting for the GPU's queued work (CUDA runs asynchronously)."""
    torch.cuda.synchronize()
    return time.perf_counter()


def clock_of(clock: str, device: str):
    """The timer function: ``TIMERS[clock]`` on the CPU, the synchronising wall clock on CUDA."""
    return cuda_wall if device.startswith("cuda") else TIMERS[clock]


def measure(fn, threads: int, min_run_time: float, label: str, clock: str = "wall",
            device: str = "cpu"):
    torch.set_num_threads(threads)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads,
                            timer=clock_of(clock, device), label="greedy decoding",
                            description=label,
                            sub_label=f"{threads} thr")
    return timer.blocked_autorange(min_run_time=min_run_time)


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def slope(lengths: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) against log(length)."""
    x = [math.log(n) for n in lengths]
    y = [math.log(s) for s in seconds]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


def run(args) -> dict:
    task, recipe, model, src, never = build(args)
    for n in args.lengths:
        check_same_tokens(model, src, n, never)
    fns = {(variant, n): decode_fn(model, src, n, never, variant == "cached")
           for variant in VARIANTS for n in args.lengths}
    torch.set_num_threads(max(args.threads))
    for fn in fns.values():                           # warm-up: allocator, position tables
        fn()
    per_thread = {}
    for threads in args.threads:
        per_length = {}
        for n in args.lengths:
            times = {variant: [] for variant in VARIANTS}
            rounds = []
            for r in range(args.rounds):
                order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
                before = load()
                medians = {}
                for variant in order:
                    m = measure(fns[variant, n], threads, args.min_run_time, variant,
                                args.timer, args.device)
                    times[variant].extend(m.times)
                    medians[variant] = m.median
                speedup = medians["recomputed"] / medians["cached"]
                rounds.append({"cached_median_s": medians["cached"],
                               "recomputed_median_s": medians["recomputed"],
                               "speedup": speedup, "load_before": before, "load_after": load()})
                print(f"  {threads} thread(s), n = {n:4d}, round {r + 1}/{args.rounds}: "
                      f"cached {medians['cached'] * 1e3:9.1f} ms, recomputed "
                      f"{medians['recomputed'] * 1e3:9.1f} ms, speed-up {speedup:6.2f} "
                      f"(load {before[0]:.2f})", flush=True)
            summary = {}
            for variant, values in times.items():
                q1, q3 = quartiles(values)
                summary[variant] = {"median_s": statistics.median(values), "iqr_s": q3 - q1,
                                    "n_blocks": len(values), "block_times_s": values}
            speedups = [r["speedup"] for r in rounds]
            s_lo, s_hi = quartiles(speedups)
            per_length[str(n)] = {
                "speedup": statistics.median(speedups), "speedup_iqr": [s_lo, s_hi],
                "speedup_min": min(speedups), "speedup_max": max(speedups),
                "cached": summary["cached"], "recomputed": summary["recomputed"],
                "rounds": rounds}
        medians = {variant: [per_length[str(n)][variant]["median_s"] for n in args.lengths]
                   for variant in VARIANTS}
        per_thread[str(threads)] = {
            "lengths": per_length,
            "slopes": ({variant: slope(args.lengths, medians[variant]) for variant in VARIANTS}
                       if len(args.lengths) > 1 else None),
            "slopes_longest_two": ({variant: slope(args.lengths[-2:], medians[variant][-2:])
                                    for variant in VARIANTS}
                                   if len(args.lengths) > 1 else None)}
    longest = str(max(args.lengths))
    return {
        "benchmark": "decode",
        "description": "greedy decoding of n tokens, batch B: decoding.greedy_decode with the "
                       "key/value cache against recomputing the whole prefix at every step "
                       "(use_cache=False); every row runs all n steps",
        "speedups_at_longest": {t: v["lengths"][longest]["speedup"]
                                for t, v in per_thread.items()},
        "longest": int(longest),
        "threads": args.threads,
        "lengths": args.lengths,
        "results": per_thread,
        "config": {"d_model": recipe["d_model"], "heads": recipe["heads"],
                   "encoder_layers": recipe["layers"], "decoder_layers": recipe["layers"],
                   "d_ff": recipe["d_ff"], "positional": recipe["positional"],
                   "norm_first": recipe["norm_first"], "recipe": "de2num",
                   "src_vocab": len(task.src_vocab), "tgt_vocab": len(task.tgt_vocab),
                   "batch": int(src.shape[0]), "source_length_max": int(src.shape[1]),
                   "source_length_mean": float((src != task.src_vocab.pad_id).sum(1)
                                               .float().mean()),
                   "eos_id": never, "eos_note": "one past the last target id: never produced",
                   "rounds": args.rounds, "min_run_time_s": args.min_run_time,
                   "timer": args.timer, "device": args.device,
                   "seed": args.seed, "quick": args.quick,
                   "parameters": sum(p.numel() for p in model.parameters())},
        **provenance(),
    }


def plot(result: dict, path: Path) -> None:
    """decode.png: time against length on log-log axes, both variants at every thread count,
    with O(n) and O(n^2) reference lines through each variant's point at the longest length
    (of the fewest threads)."""
    from matplotlib.figure import Figure
    lengths = result["lengths"]
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.subplots()
    colours = {"cached": "tab:blue", "recomputed": "tab:red"}
    styles = ["-", "--", ":", "-."]
    order = sorted(result["results"], key=int)          # 1 thread: solid, 2: dashed, ...
    for threads in order:
        r, i = result["results"][threads], order.index(threads)
        for variant in VARIANTS:
            t = [r["lengths"][str(n)][variant]["median_s"] for n in lengths]
            s = r["slopes"][variant] if r["slopes"] else float("nan")
            last = r["slopes_longest_two"][variant] if r["slopes"] else float("nan")
            ax.plot(lengths, t, styles[i % len(styles)], marker="o", color=colours[variant],
                    label=f"{variant}, {threads} thread(s): slope {s:.2f}, "
                          f"{lengths[-2]}->{lengths[-1]}: {last:.2f}")
    first = result["results"][order[0]]["lengths"]
    n0 = lengths[-1]
    grid = [lengths[0], lengths[-1]]
    for variant, power, name in (("cached", 1, "O(n)"), ("recomputed", 2, "O(n²)")):
        t0 = first[str(n0)][variant]["median_s"]
        ax.plot(grid, [t0 * (n / n0) ** power for n in grid], color="grey",
                linestyle=(0, (1, 2)) if power == 1 else (0, (4, 2)), linewidth=1,
                label=f"{name} reference")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_xlabel("tokens decoded n (every row runs all n steps)")
    c = result["config"]
    ax.set_ylabel(f"{c['timer']} time per batch (s), median")
    ax.set_title(f"greedy decoding, batch {c['batch']}, de2num-sized model\n"
                 f"speed-up at n = {result['longest']}: " + ", ".join(
                     f"{result['speedups_at_longest'][t]:.1f}x ({t} thr)" for t in order),
                 fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: lengths 4 and 8, batch 4, 1 round, 0.02 s per measurement")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="tokens to decode (default 16 32 64 128)")
    p.add_argument("--batch", type=int, default=None, help="sources per batch (default 32)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument("--min-run-time", type=float, default=None,
                   help="seconds per measurement (blocked_autorange; default 1)")
    p.add_argument("--timer", choices=sorted(TIMERS), default="wall",
                   help="wall: elapsed time (default). process: this process's CPU time, "
                        "steadier on a shared machine at 1 thread (at 2+ threads it adds up "
                        "the threads' time)")
    p.add_argument("--d-model", dest="d_model", type=int, default=None,
                   help="override the recipe's width (default: de2num's)")
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--d-ff", dest="d_ff", type=int, default=None)
    p.add_argument("--device", default="cpu",
                   help="cpu (default) or cuda (timed with a synchronising wall clock)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON file (default {DEFAULT_OUT.relative_to(HERE.parent)}; "
                        "--quick: none)")
    p.add_argument("--plot", type=Path, default=None,
                   help=f"PNG file (default {DEFAULT_PLOT.relative_to(HERE.parent)}; "
                        "--quick: none)")
    args = p.parse_args(argv)
    quick = {"lengths": [4, 8], "batch": 4, "rounds": 1, "min_run_time": 0.02}
    full = {"lengths": [16, 32, 64, 128], "batch": 32, "rounds": 3, "min_run_time": 1.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not args.quick:
        args.out = args.out or DEFAULT_OUT
        args.plot = args.plot or DEFAULT_PLOT
    if min(args.threads) < 1 or args.rounds < 1 or args.min_run_time <= 0 \
            or min(args.lengths) < 1 or args.batch < 1:
        p.error("--threads, --lengths, --batch, --rounds and --min-run-time must be positive")
    args.lengths = sorted(set(args.lengths))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() "
                "is False); run on a GPU machine or use --device cpu")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    print(f"greedy decoding, cached vs recomputed: lengths {args.lengths}, batch {args.batch}, "
          f"threads {args.threads}; torch {torch.__version__}, load {load()}", flush=True)
    result = run(args)
    result["seconds"] = time.perf_counter() - began
    print()
    for threads, r in result["results"].items():
        slopes = r["slopes"] or {}
        print(f"{threads} thread(s): " + ", ".join(
            f"n={n}: {v['speedup']:.2f}x" for n, v in r["lengths"].items())
            + (f"; slopes cached {slopes['cached']:.2f}, recomputed "
               f"{slopes['recomputed']:.2f}" if slopes else ""))
    print(f"speed-up at n = {result['longest']}: " + ", ".join(
        f"{v:.2f}x with {t} thread(s)" for t, v in result["speedups_at_longest"].items()))
    print(f"load average at the end: {result['load_at_end']}")
    if args.out is not None:
        save_json(args.out, result)
    if args.plot is not None:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
