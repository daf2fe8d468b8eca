"""What the benchmark scripts share: the command line and the machine they record with their
results, and the training run with a progress bar that the learning-curve scripts repeat."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

from scratchformer.training import fit, make_optimizer

ROOT = Path(__file__).resolve().parent.parent


def command_line() -> str:
    """The command that made this output, with the thread variable if it was set."""
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ)
    cmd = "python " + " ".join(shlex.quote(a) for a in [
        os.path.relpath(sys.argv[0], ROOT) if Path(sys.argv[0]).exists() else sys.argv[0],
        *sys.argv[1:]])
    return f"{env} {cmd}".strip()


def begin_run(threads: int | None) -> str:
    """Set torch's thread count (None: leave it) and print and return the command line, which
    every results file records."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    command = command_line()
    print(command, flush=True)
    return command


def load() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded: how busy the machine was."""
    return [round(x, 2) for x in os.getloadavg()]


def provenance() -> dict:
    """What every suite result records about where and when it was measured."""
    import datetime

    import torch

    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_at_end": load(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def save_json(path: Path, result: dict) -> None:
    """Write ``result`` to ``path`` through a temporary file, so that an interrupted run never
    leaves half a JSON file behind, and say so."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print(f"wrote {path}")


def cpu_model() -> str:
    """The CPU's model name (Linux), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fit_with_bar(model, recipe: dict, stream, bar, *, steps: int, log_every: int,
                 eval_every: int = 0, evaluate_fn=None):
    """Train ``model`` with the recipe's optimizer and schedule on ``stream.batch(step)`` for
    ``steps`` steps, advancing the shared tqdm ``bar``; returns ``fit``'s history."""
    optimizer, scheduler = make_optimizer(model, recipe)
    done = [0]

    def advance(record):
        bar.update(record["step"] - done[0])
        bar.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
        done[0] = record["step"]

    return fit(model, optimizer, scheduler, lambda step: [stream.batch(step)], steps=steps,
               epsilon=recipe["label_smoothing"], log_every=log_every, eval_every=eval_every,
               evaluate_fn=evaluate_fn, on_log=advance, progress=False)


def write_results(path: Path, result: dict, *, began: float, command: str, load, fast: bool) -> dict:
    """Add the run's metadata (time since ``began``, command, torch, threads, load average at
    the start and now, machine) to ``result``, write it as JSON to ``path`` and say so."""
    import json
    import time

    import torch

    result.update({
        "seconds": time.perf_counter() - began, "command": command,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "fast": fast,
        "load_average": load,
        "load_average_end": list(os.getloadavg()) if load else None,
        "machine": platform.machine(),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {os.path.relpath(path)} in {result['seconds']:.0f} s")
    print(command)
    return result
