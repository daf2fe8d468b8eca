"""Tables and plots of the benchmark results, for the book's benchmarks appendix.

Every function takes the JSON a benchmark script wrote (as a dict) and returns Markdown or a
matplotlib figure; nothing here holds a number of its own. ``load_results(directory)`` reads
the files ``benchmarks/suite.py`` (``results/cpu/``) or ``benchmarks/gpu.sh``
(``results/gpu/``) wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ("suite", "attention", "attention_bf16", "train_step", "decode", "memory",
         "time_to_accuracy", "multi30k")
LABELS = {"explicit": "ours, explicit", "fused": "ours, fused",
          "reference": "nn.MultiheadAttention", "sdpa": "bare SDPA module"}
MB = 1_000_000


def load_results(directory: str | Path) -> dict[str, dict]:
    """``{name: data}`` for every ``<name>.json`` of ``NAMES`` in ``directory`` (missing ones
    are left out; an empty dict if the directory does not exist)."""
    directory = Path(directory)
    return {name: json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
            for name in NAMES if (directory / f"{name}.json").is_file()}


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _load(values) -> str:
    return f"{values[0]:.2f}" if values else "n/a"


def machine_line(data: dict) -> str:
    """Where and when a result was measured: date, processor, torch, threads, load."""
    where = data.get("device_name") or data.get("cpu", "unknown processor")
    threads = data.get("threads")
    threads = ", ".join(map(str, threads)) if isinstance(threads, list) else threads
    parts = [f"measured {data.get('date', 'at an unknown date')[:16].replace('T', ' ')} UTC",
             f"on {where}"]
    if data.get("cpu_count"):
        parts.append(f"{data['cpu_count']} logical CPUs")
    parts.append(f"torch {data.get('torch', '?')}")
    if threads is not None:
        parts.append(f"threads: {threads}")
    if data.get("load_at_end"):
        parts.append(f"load average at the end {_load(data['load_at_end'])}")
    if data.get("config", {}).get("quick"):
        parts.append("**smoke run (--quick): the numbers mean nothing**")
    return "*" + "; ".join(parts) + ".*  \n`" + data.get("command", "?") + "`"


def suite_table(suite: dict) -> str:
    """One row per benchmark of the suite: wall time, exit status, load around it."""
    rows = [[name, f"{r['seconds']:.0f} s", "ok" if r["returncode"] == 0 else "failed",
             f"{_load(r['load_before'])} → {_load(r['load_after'])}"]
            for name, r in suite["runs"].items()]
    rows.append(["**all**", f"**{suite['seconds']:.0f} s**",
                 "within budget" if suite["within_budget"] else "over budget",
                 f"budget {suite['budget_s']} s"])
    return _table(["benchmark", "wall time", "status", "load average (1 min)"], rows)


def attention_table(data: dict, threads: str, mode: str) -> str:
    """Rows T; per implementation the median time and the ratio t_reference / t_path."""
    per_length = data["results"][threads][mode]
    names = list(data["implementations"])
    rows = []
    for T, r in per_length.items():
        rows.append([T] + [f"{r['times'][n]['median_s'] * 1e3:.2f} ms ({r['ratios'][n]:.2f}x)"
                           for n in names])
    return _table(["T"] + [LABELS.get(n, n) for n in names], rows)


def train_step_table(data: dict) -> str:
    """Per thread count: the throughput ratio ours / nn.Transformer and its spread."""
    rows = []
    for threads, r in data["results"].items():
        loads = [x["load_before"][0] for x in r["rounds"]]
        rows.append([threads, f"**{r['ratio']:.3f}**",
                     f"{r['ratio_iqr'][0]:.3f}–{r['ratio_iqr'][1]:.3f}",
                     f"{r['ratio_min']:.3f}–{r['ratio_max']:.3f}",
                     f"{r['ours']['tokens_per_s']:,.0f} / {r['reference']['tokens_per_s']:,.0f}",
                     f"{min(loads):.2f}–{max(loads):.2f}"])
    return _table(["threads", "ratio (median of rounds)", "IQR", "range",
                   "tokens/s ours / nn.Transformer", "load"], rows)


def decode_table(data: dict) -> str:
    """Per thread count: the speed-up of the cache at every length, and the slopes."""
    lengths = [str(n) for n in data["lengths"]]
    rows = []
    for threads, r in data["results"].items():
        slopes = r.get("slopes") or {}
        rows.append([threads] + [f"{r['lengths'][n]['speedup']:.1f}x" for n in lengths]
                    + [f"{slopes.get('cached', float('nan')):.2f} / "
                       f"{slopes.get('recomputed', float('nan')):.2f}"])
    return _table(["threads"] + [f"n = {n}" for n in lengths]
                  + ["slope cached / recomputed"], rows)


def memory_table(data: dict) -> str:
    """Per length: the peak memory of a step for both models and their ratio."""
    rows = [[n, f"{r['tokens_per_step']:,}", f"{r['ours']['peak_bytes'] / MB:.1f} MB",
             f"{r['reference']['peak_bytes'] / MB:.1f} MB", f"**{r['ratio']:.3f}**",
             f"{r['ours']['parameter_bytes'] / MB:.1f} MB"]
            for n, r in data["results"].items()]
    return _table(["length", "target tokens", "ours", "nn.Transformer", "ratio ours / ref.",
                   "parameters (each)"], rows)


def memory_check_line(data: dict) -> str:
    """The check of the measuring method on allocations of known size."""
    check = data.get("method_check")
    if not check:
        return f"Method: {data['method']}."
    ok = (check["measured_peak_bytes"] == check["expected_peak_bytes"]
          and check["measured_end_bytes"] == check["expected_end_bytes"])
    return (f"Method: {data['method']}. Check on known allocations: peak "
            f"{check['measured_peak_bytes'] / MB:.1f} MB measured, "
            f"{check['expected_peak_bytes'] / MB:.1f} MB expected "
            f"({'agrees' if ok else 'DISAGREES'}).")


def time_to_accuracy_table(data: dict) -> str:
    """Per task: target, steps and training seconds to reach it, test exact match."""
    rows = []
    for task, r in data["tasks"].items():
        reached = r["reached"]
        rows.append([task, f"{r['target_exact_match']:.0%}",
                     f"{r['steps']}" if reached else f"not in {r['steps_run']}",
                     f"**{r['seconds']:.1f} s**" if reached else "—",
                     f"{r['evaluation_seconds']:.1f} s ({r['evaluations']})",
                     f"{r['test_exact_match']:.3f}", f"{r['parameters']:,}",
                     _load(r["load_average"]["start"])])
    return _table(["task", "target", "steps", "training time", "evaluations (count)",
                   "test exact match", "parameters", "load"], rows)


def multi30k_table(data: dict) -> str:
    """The GPU training run: steps, wall time, the last metrics it logged."""
    last = data.get("last") or {}
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in last.items())
    return _table(["steps", "wall time", "GPU", "last record"],
                  [[str(data["steps"]), f"{data['seconds']:.0f} s", data["device_name"],
                    shown or "—"]])


def png(fig) -> bytes:
    """A figure as PNG bytes (for ``IPython.display.Image``)."""
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def attention_figure(data: dict, threads: str):
    """Ratio t_reference / t_path against T, forward and forward+backward side by side, on a
    shared y axis; the line at 1 is nn.MultiheadAttention."""
    from matplotlib.figure import Figure
    modes = list(data["results"][threads])
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, len(modes), sharey=True, squeeze=False)[0]
    for ax, mode in zip(axes, modes):
        per_length = data["results"][threads][mode]
        lengths = [int(T) for T in per_length]
        for name in data["implementations"]:
            ax.plot(lengths, [per_length[str(T)]["ratios"][name] for T in lengths],
                    marker="o", label=LABELS.get(name, name))
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(T) for T in lengths])
        ax.set_xlabel("sequence length T")
        ax.set_title(f"{mode.replace('_', ' + ')}, {threads} thread(s)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("speed vs nn.MultiheadAttention (×)")
    axes[-1].legend(fontsize=8)
    return fig


def time_to_accuracy_figure(data: dict):
    """Validation exact match against training seconds, one line per task, targets dashed."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    for task, r in data["tasks"].items():
        curve = r["curve"]
        line, = ax.plot([p["train_seconds"] for p in curve],
                        [p["exact_match"] for p in curve], marker=".", label=task)
        ax.axhline(r["target_exact_match"], color=line.get_color(), linestyle="--",
                   linewidth=0.8)
    ax.set_xlabel("training time (s), evaluations excluded")
    ax.set_ylabel("validation exact match")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
