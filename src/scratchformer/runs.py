"""Run directories of ``scratchformer train``: build a model from a task's recipe, train it with
``training.fit`` (in one process or data-parallel), checkpoint it (safetensors + ``state.pt``),
resume it bit for bit, load it back."""

# Hand-written (no notebook exports here). A run directory holds
#   config.json        task, every training option, the model configuration, seed, versions
#   vocab.json         the source and target vocabularies
#   model.safetensors  the weights; a tied generator is stored once and re-tied on load
#   state.pt           optimizer, scheduler, grad scaler, RNG states and the step (torch.load
#                      with weights_only=True: plain tensors and containers, no pickled code)
#   metrics.jsonl      one JSON object per logged step (step, loss, lr, ...; exact_match on
#                      evaluation steps)
#   curves.png         loss, exact match (BLEU for multi30k) and learning rate against the step
#   checkpoints/       with --average-last K: the weights of the last K checkpoints, and
#   averaged.safetensors  their average, written at the end and used by translate/evaluate
# The batches are a pure function of the step (data.BatchStream), so a checkpoint needs no data
# state but the step. Every file is written to a temporary name and moved into place with
# os.replace, so an interrupted save leaves the previous file intact.

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["RunError", "Run", "OPTIONS", "task_defaults", "resolve_options",
           "check_options", "resolve_device", "build_model", "save_weights", "load_weights",
           "save_state", "load_state", "read_metrics", "plot_curves", "train", "load_run",
           "translate_texts", "check_decoding", "beam_texts", "sample_texts",
           "plot_attention", "evaluate_run"]

CONFIG, VOCAB, MODEL, STATE = "config.json", "vocab.json", "model.safetensors", "state.pt"
METRICS, CURVES = "metrics.jsonl", "curves.png"
AVERAGED, CHECKPOINTS = "averaged.safetensors", "checkpoints"
# Real translation data (scratchformer.translation): "multi30k" downloads Multi30k,
# "multi30k-sample" (`--task multi30k --sample`) uses the project's own small sample.
TRANSLATION_TASKS = ("multi30k", "multi30k-sample")
FORMAT = 1                      # version of the run-directory layout

# Every option of `scratchformer train` that a run stores, with its kind. The recipe of the task
# (training.RECIPES) gives the defaults of the first group.
OPTIONS: dict[str, str] = {
    "d_model": "size", "heads": "size", "layers": "size", "d_ff": "size",
    "dropout": "probability", "lr": "rate", "warmup": "size", "label_smoothing": "probability",
    "positional": "positional", "steps": "size", "batch_size": "size", "n_train": "size",
    "eval_every": "count", "log_every": "size", "norm_first": "flag", "max_len": "size",
    # not in the recipes:
    "seed": "count", "device": "device", "precision": "precision", "threads": "threads",
    "compile": "flag", "accumulate": "size", "average_last": "count",
    # translation tasks only (None for the others):
    "vocab_size": "vocab", "data_dir": "path",
}
DEFAULTS = {"seed": 0, "device": "auto", "precision": "fp32", "threads": None, "compile": False,
            "accumulate": 1, "average_last": 0, "vocab_size": None, "data_dir": None}
# Options that may change when a run is resumed; any other must equal the stored value.
# (--accumulate splits the same batch differently: the steps stay the same.)
FREE_ON_RESUME = ("steps", "log_every", "eval_every", "device", "precision", "threads", "compile",
                  "accumulate", "average_last", "data_dir")
POSITIONAL = ("sinusoidal", "learned", "rotary")
PRECISIONS = ("fp32", "bf16", "fp16")
SPLITS = ("train", "valid", "test")


class RunError(ValueError):
    """A problem with the user's options or run directory: shown as one line, no traceback."""


def flag(key: str) -> str:
    """The command-line spelling of an option: ``d_model`` -> ``--d-model``."""
    return "--" + key.replace("_", "-")


# --- options -----------------------------------------------------------------------------------

def task_defaults(task: str) -> dict[str, Any]:
    """The options of a fresh run of ``task``: its recipe from chapter 12 plus seed and device."""
    from scratchformer import data, training
    if task in TRANSLATION_TASKS:
        from scratchformer import translation
        recipe = dict(translation.RECIPES[task])
    elif task not in data.TASKS:
        raise RunError(f"unknown task {task!r}; choose one of {', '.join(data.TASKS)} or "
                       "multi30k")
    else:
        recipe = dict(training.RECIPES[task])
    missing = [key for key in OPTIONS if key not in recipe and key not in DEFAULTS]
    if missing:
        raise RunError(f"the recipe of {task!r} has no {', '.join(missing)}")
    return {**DEFAULTS, **{key: recipe[key] for key in OPTIONS if key in recipe}}


def resolve_options(task: str, given: dict[str, Any], stored: dict[str, Any] | None = None,
                    where: str = "") -> dict[str, Any]:
    """The options of a run: ``given`` (None = not given) over the recipe, or, when resuming,
    over the ``stored`` options, of which only FREE_ON_RESUME may change (RunError otherwise)."""
    given = {key: value for key, value in given.items() if value is not None}
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise RunError(f"unknown option(s): {', '.join(unknown)}")
    if stored is None:
        return {**task_defaults(task), **given}
    for key, value in given.items():
        if key not in FREE_ON_RESUME and stored.get(key) != value:
            raise RunError(f"{flag(key)} {_show(value)} does not match the run in {where}, "
                           f"which was trained with {flag(key)} {_show(stored.get(key))}; "
                           "leave the option out to resume it")
    return {**DEFAULTS, **stored, **given}


def _show(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_options(options: dict[str, Any]) -> None:
    """RunError naming the option unless every value is valid (sizes > 0, probabilities in
    [0, 1), ``d_model`` divisible by ``heads``, known kinds)."""
    for key, kind in OPTIONS.items():
        value = options.get(key)
        name = f"{flag(key)} must be"
        is_int = isinstance(value, int) and not isinstance(value, bool)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "size" and not (is_int and value > 0):
            raise RunError(f"{name} a positive integer, got {value!r}")
        if kind == "count" and not (is_int and value >= 0):
            raise RunError(f"{name} an integer >= 0, got {value!r}")
        if kind in ("threads", "vocab") and value is not None and not (is_int and value > 0):
            raise RunError(f"{name} a positive integer, got {value!r}")
        if kind == "rate" and not (is_number and math.isfinite(value) and value > 0):
            raise RunError(f"{name} a positive number, got {value!r}")
        if kind == "probability" and not (is_number and 0 <= value < 1):
            raise RunError(f"{name} in [0, 1), got {value!r}")
        if kind == "flag" and not isinstance(value, bool):
            raise RunError(f"{name} true or false, got {value!r}")
        if kind == "positional" and value not in POSITIONAL:
            raise RunError(f"{name} one of {', '.join(POSITIONAL)}, got {value!r}")
        if kind == "precision" and value not in PRECISIONS:
            raise RunError(f"{name} one of {', '.join(PRECISIONS)}, got {value!r}")
        if kind == "device" and not (value in ("auto", "cpu") or str(value).startswith("cuda")):
            raise RunError(f"{name} auto, cpu or cuda, got {value!r}")
    d_model, heads = options["d_model"], options["heads"]
    if d_model % heads:
        divisors = [h for h in range(1, d_model + 1) if d_model % h == 0]
        raise RunError(f"--d-model {d_model} is not divisible by --heads {heads}: every head "
                       f"gets d_model / heads features; choose --heads among {divisors}")
    if options["positional"] == "rotary" and (d_model // heads) % 2:
        raise RunError(f"--positional rotary needs an even head size, got --d-model {d_model} / "
                       f"--heads {heads} = {d_model // heads}")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without CUDA -> RunError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            why = ("this torch is built without CUDA" if torch.version.cuda is None
                   else "no CUDA device is visible")
            raise RunError(f"--device {name}: CUDA is not available here ({why}); "
                           "use --device cpu or --device auto")
        try:
            device = torch.device(name)
        except RuntimeError as error:
            raise RunError(f"--device {name}: {error}") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RunError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        return device
    return torch.device("cpu")


# --- the model and its files ------------------------------------------------------------------

def model_config(options: dict[str, Any], src_vocab, tgt_vocab):
    """The ``TransformerConfig`` of a run (both stacks ``layers`` deep, tied embeddings)."""
    from scratchformer.data import PAD_ID
    from scratchformer.model import TransformerConfig
    return TransformerConfig(
        src_vocab_size=len(src_vocab), tgt_vocab_size=len(tgt_vocab),
        d_model=options["d_model"], n_heads=options["heads"],
        n_encoder_layers=options["layers"], n_decoder_layers=options["layers"],
        d_ff=options["d_ff"], dropout=float(options["dropout"]), max_len=options["max_len"],
        norm_first=options["norm_first"], tie_embeddings=True, pad_id=PAD_ID,
        positional=options["positional"])


def build_model(config_dict: dict[str, Any]):
    """A ``Transformer`` from the ``model`` entry of config.json (RunError if it is invalid)."""
    from scratchformer.model import Transformer, TransformerConfig
    try:
        return Transformer(TransformerConfig(**config_dict))
    except (TypeError, ValueError) as error:
        raise RunError(f"invalid model configuration: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file and ``os.replace``: never half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(path: Path, obj) -> None:
    _replace(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8"))


def save_weights(model: torch.nn.Module, path: str | Path, step: int = 0) -> None:
    """Save the weights as safetensors; a tensor shared by several names (the tied generator)
    is stored once, and the other names are recorded in the metadata ("aliases")."""
    from safetensors.torch import save_file
    tensors, aliases, seen = {}, {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().to("cpu").contiguous()
    metadata = {"format": f"scratchformer-run-{FORMAT}", "step": str(step),
                "aliases": json.dumps(aliases)}
    _replace(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(model: torch.nn.Module, path: str | Path) -> int:
    """Load ``save_weights``'s file into ``model`` (in place, so tied parameters stay one
    Parameter); return the step it was saved at. RunError on a damaged or mismatched file."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no {path.name} in {path.parent}: the run has saved no checkpoint yet")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        aliases = json.loads(metadata.get("aliases", "{}"))
        step = int(metadata.get("step", 0))
    except Exception as error:           # safetensors raises its own error types
        raise RunError(f"{path} is damaged or truncated ({_one_line(error)}); "
                       "restore it or train again") from None
    expected = model.state_dict()
    for alias, target in aliases.items():
        if target in tensors:
            tensors[alias] = tensors[target]
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [f"{name} {tuple(tensors[name].shape)} instead of {tuple(tensor.shape)}"
             for name, tensor in expected.items()
             if name in tensors and tensors[name].shape != tensor.shape]
    if missing or extra or wrong:
        details = "; ".join(filter(None, [
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(extra[:3])}" if extra else "",
            f"shape {', '.join(wrong[:2])}" if wrong else ""]))
        raise RunError(f"{path} does not match the model of {path.parent / CONFIG} ({details})")
    model.load_state_dict(tensors)
    return step


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        states["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos),
                           int(has_gauss), float(gauss)]
    except ImportError:                  # numpy is optional
        pass
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if states.get("cuda") and torch.cuda.is_available():
        if len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
    if states.get("numpy") is not None:
        try:
            import numpy as np
            kind, keys, pos, has_gauss, gauss = states["numpy"]
            np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
        except ImportError:
            pass


def save_state(path: str | Path, step: int, optimizer, scheduler=None, scaler=None,
               rng_ranks: list | None = None) -> None:
    """``state.pt``: optimizer, scheduler, grad scaler, RNG states and the step; a distributed
    run also stores the RNG states of every rank (``rng_ranks``, by rank)."""
    state = {"format": FORMAT, "step": step, "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict() if scheduler is not None else None,
             "scaler": scaler.state_dict() if scaler is not None else None,
             "rng": _rng_states() if rng_ranks is None else rng_ranks[0]}
    if rng_ranks is not None:
        state["rng_ranks"] = rng_ranks
    _replace(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read ``state.pt`` with ``weights_only=True`` (tensors and containers only)."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no {path.name} in {path.parent}: nothing to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:           # unpickling errors come in many types
        raise RunError(f"{path} is damaged ({_one_line(error)})") from None
    if not isinstance(state, dict) or not {"step", "optimizer", "rng"} <= set(state):
        raise RunError(f"{path} is not the training state of a scratchformer run")
    return state


# --- metrics and curves ------------------------------------------------------------------------

def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return float(value) if hasattr(value, "__float__") else str(value)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a torn last line, from a killed process, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise RunError(f"{path} line {number} is not JSON") from None
    return records


def _keep_metrics_until(path: Path, step: int) -> None:
    records = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    text = "".join(json.dumps(r) + "\n" for r in records)
    _replace(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def plot_curves(records: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """``curves.png``: training loss, exact match or BLEU (evaluation steps) and learning
    rate."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    logged = [r for r in records if "loss" in r]
    evaluated = [r for r in records if "exact_match" in r]
    score = ("bleu", "BLEU, validation (greedy)") if any("bleu" in r for r in evaluated) \
        else ("exact_match", "exact match, validation (%)")
    panels = [(axes[0], logged, "loss", "training loss", 1.0),
              (axes[1], evaluated, score[0], score[1], 1.0 if score[0] == "bleu" else 100.0),
              (axes[2], logged, "lr", "learning rate", 1.0)]
    for ax, rows, key, label, scale in panels:
        ax.plot([r["step"] for r in rows], [r[key] * scale for r in rows],
                marker="o" if len(rows) < 30 else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(-2, 102)
    if title:
        fig.suptitle(title)
    _replace(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))


# --- loading a run -----------------------------------------------------------------------------

@dataclass
class Run:
    """A run directory loaded for inference: its configuration, vocabularies and model."""

    path: Path
    config: dict[str, Any]
    src_vocab: Any
    tgt_vocab: Any
    model: torch.nn.Module | None = None
    step: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    weights: str = MODEL              # the file the weights came from (averaged.safetensors)

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def options(self) -> dict[str, Any]:
        return self.config["options"]


def _read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise RunError(f"no run directory {path}")
    if not path.is_dir():
        raise RunError(f"{path} is not a directory; give the run directory that "
                       "scratchformer train --out made")
    file = path / CONFIG
    if not file.is_file():
        raise RunError(f"{path} is not a run directory (it has no {CONFIG}); "
                       "make one with scratchformer train --out DIR")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{file} is damaged ({_one_line(error)})") from None
    required = {"task", "options", "model"}
    if not isinstance(config, dict) or not required <= set(config) \
            or not isinstance(config["options"], dict) or not isinstance(config["model"], dict):
        raise RunError(f"{file} is not the configuration of a scratchformer run "
                       f"(it needs the keys {', '.join(sorted(required))})")
    if config.get("format", FORMAT) > FORMAT:
        raise RunError(f"{file} has format {config['format']}; this scratchformer reads up to "
                       f"{FORMAT}: upgrade scratchformer")
    return config


def _vocab_from_json(d):
    """A vocabulary from its JSON, by its "type": CharVocab or BPEVocab."""
    from scratchformer.data import CharVocab
    kind = d.get("type", "CharVocab") if isinstance(d, dict) else None
    if kind == "BPEVocab":
        from scratchformer.translation import BPEVocab
        return BPEVocab.from_json(d)
    if kind != "CharVocab":
        raise ValueError(f"unknown vocabulary type {kind!r} (CharVocab or BPEVocab)")
    return CharVocab.from_json(d)


def _read_vocabs(path: Path, config: dict[str, Any]):
    file = path / VOCAB
    if not file.is_file():
        raise RunError(f"{path} has no {VOCAB}: the run directory is incomplete")
    try:
        both = json.loads(file.read_text(encoding="utf-8"))
        src_vocab, tgt_vocab = _vocab_from_json(both["source"]), _vocab_from_json(both["target"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            ValueError) as error:
        raise RunError(f"{file} is damaged ({_one_line(error)})") from None
    sizes = (config["model"].get("src_vocab_size"), config["model"].get("tgt_vocab_size"))
    if (len(src_vocab), len(tgt_vocab)) != sizes:
        raise RunError(f"{file} ({len(src_vocab)} source and {len(tgt_vocab)} target tokens) "
                       f"does not match {path / CONFIG} ({sizes[0]} and {sizes[1]})")
    return src_vocab, tgt_vocab


def load_run(path: str | Path, device: str = "cpu") -> Run:
    """Load a run directory for inference (RunError with the reason when it cannot)."""
    path = Path(path)
    config = _read_config(path)
    src_vocab, tgt_vocab = _read_vocabs(path, config)
    model = build_model(config["model"])
    weights = path / AVERAGED if (path / AVERAGED).is_file() else path / MODEL
    step = load_weights(model, weights)
    target = resolve_device(device)
    model.to(target).eval()
    return Run(path, config, src_vocab, tgt_vocab, model, step, target, weights.name)


# --- training ----------------------------------------------------------------------------------

def _optimizer_and_schedule(model: torch.nn.Module, options: dict[str, Any]):
    """Chapter 12's optimizer and schedule: Adam with the paper's betas, and the Noam schedule
    scaled so that the learning rate peaks at ``lr`` at step ``warmup``."""
    from scratchformer import training
    return training.make_optimizer(model, options)


def _data_fingerprint(task_data) -> str:
    text = json.dumps([task_data.train, task_data.valid, task_data.test])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _make_data(task: str, options: dict[str, Any], progress: bool = True):
    from scratchformer import data
    if task in TRANSLATION_TASKS:
        return _translation_data(task, options, progress)
    try:
        return data.make_task(task, options["n_train"], seed=options["seed"])
    except ValueError as error:
        raise RunError(f"cannot make the {task} data: {_one_line(error)}") from None


def _data_dir(options: dict[str, Any]) -> Path:
    from scratchformer import translation
    given = options.get("data_dir")
    return Path(given) if given is not None else translation.default_data_dir()


def _translation_data(task: str, options: dict[str, Any], progress: bool):
    """Multi30k (downloaded into --data-dir, verified) or the sample, with its BPE vocabulary;
    the first ``n_train`` training pairs. A DataError keeps its instructions (several lines)."""
    from scratchformer import translation
    try:
        task_data = translation.multi30k_task(
            _data_dir(options), sample=task == "multi30k-sample",
            vocab_size=options["vocab_size"], seed=options["seed"], progress=progress)
    except translation.DataError as error:
        raise RunError(str(error)) from None
    except ValueError as error:
        raise RunError(f"cannot make the {task} data: {_one_line(error)}") from None
    if options["n_train"] > len(task_data.train):
        raise RunError(f"--n-train {options['n_train']}: the {task} training split has only "
                       f"{len(task_data.train)} pairs")
    task_data.train = task_data.train[:options["n_train"]]
    return task_data


def _translation_pairs(task: str, options: dict[str, Any], split: str) -> list:
    """One split of a translation task's data, without building a vocabulary."""
    from scratchformer import translation
    parent = _data_dir(options)
    try:
        if task == "multi30k-sample":
            folder = parent / "multi30k-sample"
            translation.write_sample(folder)
        else:
            folder = translation.fetch_multi30k(parent / "multi30k")
        return translation.load_split(folder, split)
    except translation.DataError as error:
        raise RunError(str(error)) from None


def _versions() -> dict[str, str]:
    import safetensors

    import scratchformer
    return {"scratchformer": scratchformer.__version__, "torch": torch.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}


def _prepare_out(path: Path, fresh: bool) -> None:
    """Create the run directory (fresh) and make sure it can be written, before any work."""
    if path.exists() and not path.is_dir():
        raise RunError(f"cannot use {path} as the run directory: it is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot create the run directory {path}: "
                       f"{error.strerror or error}") from None
    if fresh and (path / CONFIG).exists():
        raise RunError(f"{path} already holds a run; continue it with --resume {path} "
                       "(and --steps N), or choose another --out")
    probe = path / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunError(f"cannot write to the run directory {path}: "
                       f"{error.strerror or error}") from None


class _StopOnInterrupt:
    """Ctrl-C (SIGINT) sets a flag that the training loop reads after each step; while it is
    installed, further Ctrl-C never interrupt the checkpoint being written."""

    def __init__(self, echo: Callable[[str], None], restore: bool = True):
        self.requested, self.count, self.echo, self.previous = False, 0, echo, None
        self.restore = restore

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if not self.requested:
            self.echo("\nCtrl-C: stopping after this step and saving a checkpoint "
                      "(another Ctrl-C will not interrupt the save) ...")
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None and self.restore:
            signal.signal(signal.SIGINT, self.previous)


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def train(task: str | None, given: dict[str, Any], *, out: str | Path | None = None,
          resume: str | Path | None = None, progress: bool = True,
          echo: Callable[[str], None] = print, restore_sigint: bool = True,
          distributed: bool = False) -> dict[str, Any]:
    """Train a fresh run of ``task`` into ``out``, or continue the run in ``resume`` up to
    ``given["steps"]``. ``given`` maps option names to values (None = default). Returns a
    summary: run, task, step, steps, interrupted, seconds, exact_match. Ctrl-C saves a
    checkpoint and returns; ``restore_sigint=False`` (the command, which exits next) keeps
    ignoring further Ctrl-C instead of restoring the previous handler. ``distributed``: one
    of the processes that torchrun started (scratchformer.distributed): every rank trains on
    its share of the same global batches, rank 0 alone writes and prints."""
    from scratchformer import data
    started = time.perf_counter()
    stored = None
    if resume is not None:
        run_dir = Path(resume)
        stored = _read_config(run_dir)
        if task is not None and task != stored["task"]:
            raise RunError(f"--task {task} does not match the run in {run_dir}, which was "
                           f"trained on {stored['task']}; leave --task out to resume it")
        task = stored["task"]
        options = resolve_options(task, given, stored["options"], str(run_dir))
    else:
        if task is None:
            raise RunError("give --task (one of " + ", ".join(data.TASKS)
                           + ", multi30k), or --resume DIR to continue a run")
        options = resolve_options(task, given)
        run_dir = Path(out) if out is not None else \
            Path("runs") / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    if task in TRANSLATION_TASKS:
        options["data_dir"] = str(_data_dir(options).expanduser().resolve())
    else:
        for key in ("vocab_size", "data_dir"):
            if options.get(key) is not None:
                raise RunError(f"{flag(key)} applies to --task multi30k only")
    check_options(options)
    from scratchformer import distributed as ddp
    if not distributed:
        ctx = ddp.single(resolve_device(options["device"]))
    else:
        try:
            ctx = ddp.setup(options["device"])
        except ddp.DistributedError as error:
            raise RunError(str(error)) from None
    try:
        if options["precision"] == "fp16" and ctx.device.type != "cuda":
            raise RunError("--precision fp16 needs a CUDA device; use bf16 on the CPU")
        _on_main(ctx, lambda: _prepare_out(run_dir, fresh=resume is None))
        if not ctx.main:                  # the other ranks are silent
            echo, progress = _silent, False
        # From here on Ctrl-C only asks to stop: the run directory is never left half written.
        with _StopOnInterrupt(_stderr if ctx.main else _silent, restore=restore_sigint) as stop:
            return _train(task, options, run_dir, stored, ctx, stop, progress, echo, started)
    finally:
        if distributed:
            ddp.shutdown()


def _silent(text: str) -> None:
    pass


def _on_main(ctx, action: Callable[[], None]) -> None:
    """Run ``action`` on rank 0 only; a RunError there is raised on every rank, so that all
    processes stop together instead of waiting for rank 0 forever."""
    error = None
    if ctx.main:
        try:
            action()
        except RunError as raised:
            error = str(raised)
    error = ctx.from_main(error)
    if error is not None:
        raise RunError(error)


def _rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The dropout seed of rank > 0 of a distributed run (rank 0 continues the seed's stream)."""
    digest = hashlib.sha256(f"scratchformer-rank:{seed}:{rank}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _micro_batches(src: torch.Tensor, tgt: torch.Tensor, accumulate: int) -> list:
    """The batch ``(src (B, S), tgt (B, T))`` as ``accumulate`` micro-batches of rows (fewer if
    B < accumulate), each without the columns that are padding in all its rows."""
    from scratchformer.distributed import shard
    if accumulate == 1:
        return [(src, tgt)]
    parts = zip(torch.tensor_split(src, accumulate), torch.tensor_split(tgt, accumulate))
    return [shard(s, t, 0, 1, trim=True) for s, t in parts if s.shape[0]]


def _train(task, options, run_dir: Path, stored, ctx, stop: _StopOnInterrupt, progress,
           echo, started) -> dict[str, Any]:
    from scratchformer import data, distributed, training
    device = ctx.device
    if options["threads"] is not None:
        torch.set_num_threads(options["threads"])
    # Rank 0 makes the data first (it downloads what is missing); the others then find it.
    made: dict[str, Any] = {}
    _on_main(ctx, lambda: made.setdefault("data", _make_data(task, options, progress)))
    task_data = made["data"] if ctx.main else _make_data(task, options, False)
    fingerprint = _data_fingerprint(task_data)
    seed = options["seed"]
    torch.manual_seed(seed)
    random.seed(seed)
    if options["positional"] == "learned" and options["max_len"] < task_data.max_len:
        raise RunError(f"--max-len {options['max_len']} is shorter than the longest sequence "
                       f"of the {task} data ({task_data.max_len} tokens with <s>, </s>), and "
                       "learned positions have no row beyond it")
    model_dict = asdict(model_config(options, task_data.src_vocab, task_data.tgt_vocab))
    if stored is not None:
        _check_resumable(run_dir, stored, model_dict, task_data, fingerprint)
    model = build_model(model_dict)      # the same initial weights on every rank
    if ctx.rank > 0:                      # but its own dropout masks
        torch.manual_seed(_rank_seed(seed, ctx.rank))
    start = 0
    if stored is not None:
        start = load_weights(model, run_dir / MODEL)
        state = load_state(run_dir / STATE)
        if state["step"] != start:
            raise RunError(f"the checkpoint in {run_dir} is inconsistent ({MODEL} at step "
                           f"{start}, {STATE} at step {state['step']}): it was interrupted "
                           "while saving")
        if options["steps"] <= start:
            raise RunError(f"the run in {run_dir} is already at step {start}; pass "
                           f"--steps larger than {start} to continue it")
    model.to(device)
    optimizer, scheduler = _optimizer_and_schedule(model, options)
    scaler = torch.amp.GradScaler(device.type) if options["precision"] == "fp16" else None
    if stored is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scheduler") is not None:
                scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError, RuntimeError) as error:
            raise RunError(f"{run_dir / STATE} does not fit the model: "
                           f"{_one_line(error)}") from None
        # last: building the model drew random numbers
        ranks = state.get("rng_ranks") or []
        if ctx.distributed and len(ranks) == ctx.world:
            _set_rng_states(ranks[ctx.rank])      # each rank continues its own stream
        else:
            _set_rng_states(state["rng"])
            if ctx.rank > 0:                      # resumed with another number of processes
                torch.manual_seed(_rank_seed(seed, ctx.rank, start))
        if ctx.main:
            _keep_metrics_until(run_dir / METRICS, start)
            _forget_after(run_dir, start, options["eval_every"])
    created = (stored or {}).get("created") or time.strftime("%Y-%m-%dT%H:%M:%S")
    if ctx.main:
        _write_json(run_dir / CONFIG, {
            "format": FORMAT, "task": task, "options": options, "model": model_dict,
            "data": {"n_train": options["n_train"], "n_valid": len(task_data.valid),
                     "n_test": len(task_data.test), "seed": seed, "fingerprint": fingerprint},
            "processes": ctx.world, "versions": _versions(), "created": created})

    saved = {"step": start}

    def checkpoint(step: int) -> None:    # on every rank: gathering the RNG states is collective
        rng_ranks = ctx.gather(_rng_states()) if ctx.distributed else None
        if ctx.main:
            save_weights(model, run_dir / MODEL, step)
            save_state(run_dir / STATE, step, optimizer, scheduler, scaler, rng_ranks)
            if options["average_last"] and step > 0:
                _keep_for_average(model, run_dir, step, options["average_last"])
        saved["step"] = step

    if stored is None:
        if ctx.main:
            _write_json(run_dir / VOCAB, {"source": task_data.src_vocab.to_json(),
                                          "target": task_data.tgt_vocab.to_json()})
        checkpoint(0)                     # a complete run directory from the start
    stream = data.BatchStream(data.PairDataset(task_data.train, task_data.src_vocab,
                                               task_data.tgt_vocab),
                              options["batch_size"], seed=seed)

    # Under DDP each rank keeps its rows of every micro-batch, and the loss is normalised by
    # the labels of the whole step on all ranks (scratchformer.distributed explains why).
    global_loss = (distributed.GlobalLoss(ctx, training.micro_batch_loss, data.PAD_ID)
                   if ctx.distributed else None)

    def batch_at(step: int):
        micro = _micro_batches(*stream.batch(step), options["accumulate"])
        if global_loss is not None:
            micro = global_loss.batches(micro)
        return [(src.to(device, non_blocking=True), tgt.to(device, non_blocking=True))
                for src, tgt in micro]

    evaluated = {"now": False}

    def evaluate_fn(_model) -> dict:      # the uncompiled model: decoding varies the shapes
        evaluated["now"] = True
        if not ctx.main:                  # rank 0 evaluates; the others wait at the next step
            return {}
        if task in TRANSLATION_TASKS:     # greedy BLEU on the validation split
            return translation_scores(model, task_data.valid, task_data.src_vocab,
                                      task_data.tgt_vocab, options["max_len"])
        return training.evaluate(model, task_data.valid, task_data.src_vocab,
                                 task_data.tgt_vocab)

    metrics = (open(run_dir / METRICS, "a" if stored is not None else "w",   # closed below
                    encoding="utf-8") if ctx.main else None)

    def on_log(record: dict) -> None:     # on every rank, at the same steps
        if global_loss is not None:
            record = global_loss.record(record)
        if metrics is not None:
            metrics.write(json.dumps(record, default=_jsonable) + "\n")
            metrics.flush()
        if evaluated["now"]:
            evaluated["now"] = False
            checkpoint(scheduler.last_epoch)      # the steps taken so far

    trained = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel
        trained = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            **distributed.no_buffer_sync())
    trained = training.compile_model(trained) if options["compile"] else trained
    if ctx.distributed:
        stop = distributed.AgreedStop(ctx, stop)
    params = sum(p.numel() for p in model.parameters())
    where = (f"{ctx.world} processes, {device.type}" if ctx.distributed else device.type)
    echo(f"{task}: {params:,} parameters ({options['layers']}+{options['layers']} layers, "
         f"d_model {options['d_model']}, {options['heads']} heads), {where} "
         f"{options['precision']}, steps {start + 1}..{options['steps']} -> {run_dir}")
    history: list[dict] = []
    try:
        if not (stop() if ctx.distributed else stop.requested):
            history = training.fit(
                trained, optimizer, scheduler, batch_at, steps=options["steps"],
                start_step=start, epsilon=options["label_smoothing"], clip_norm=1.0,
                precision=options["precision"], scaler=scaler, log_every=options["log_every"],
                eval_every=options["eval_every"], evaluate_fn=evaluate_fn, on_log=on_log,
                stop=stop, progress=progress, loss_fn=global_loss)
    finally:
        if metrics is not None:
            metrics.close()
    done = scheduler.last_epoch
    if saved["step"] != done:
        checkpoint(done)
    last = history[-1] if history else {}
    exact = None
    if ctx.main:
        plot_curves(read_metrics(run_dir / METRICS), run_dir / CURVES,
                    title=f"{task}: {run_dir}")
        if last.get("step") == done and "exact_match" in last:
            exact = last["exact_match"]
        elif not stop.requested:
            exact = evaluate_fn(model)["exact_match"]
    seconds = time.perf_counter() - started
    if stop.requested:
        again = ("torchrun --nproc_per_node=N -m scratchformer train --distributed"
                 if ctx.distributed else "scratchformer train")
        echo(f"interrupted at step {done} of {options['steps']} after {seconds:.1f} s, "
             f"run saved in {run_dir}; continue it with: {again} --resume "
             f"{run_dir} --steps {options['steps']}")
    elif ctx.main:
        if task in TRANSLATION_TASKS:
            scores = last if last.get("step") == done and "bleu" in last else {}
            bleu = scores.get("bleu")
            if bleu is None:
                bleu = evaluate_fn(model)["bleu"]
            echo(f"done: {done} steps in {seconds:.1f} s, BLEU {bleu:.2f} (greedy, "
                 f"{len(task_data.valid)} validation sentences), run saved in {run_dir}")
        else:
            echo(f"done: {done} steps in {seconds:.1f} s, exact match {exact:.1%} "
                 f"({len(task_data.valid)} validation pairs), run saved in {run_dir}")
        if options["average_last"]:
            steps = _write_average(run_dir, options["average_last"])
            echo(f"averaged the weights of step{'s' * (len(steps) > 1)} "
                 f"{', '.join(map(str, steps))} into "
                 f"{run_dir / AVERAGED}: scratchformer translate and evaluate use them")
    return {"run": str(run_dir), "task": task, "step": done, "steps": options["steps"],
            "interrupted": stop.requested, "seconds": seconds, "exact_match": exact}


def _checkpoint_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / CHECKPOINTS).glob("step-*.safetensors"))


def _keep_for_average(model, run_dir: Path, step: int, keep: int) -> None:
    """A copy of the weights in checkpoints/step-NNNNNNN.safetensors; only the last ``keep``
    copies stay."""
    folder = run_dir / CHECKPOINTS
    folder.mkdir(exist_ok=True)
    save_weights(model, folder / f"step-{step:07d}.safetensors", step)
    for old in _checkpoint_files(run_dir)[:-keep]:
        old.unlink()


def _forget_after(run_dir: Path, step: int, eval_every: int) -> None:
    """On resume at ``step``: the average is out of date; copies after ``step`` are not this
    run's, and a copy at ``step`` itself that is no evaluation step was made because the
    previous command ended there (the end, or Ctrl-C): the run continued without a stop
    keeps the same copies as one that never stopped."""
    (run_dir / AVERAGED).unlink(missing_ok=True)
    for path in _checkpoint_files(run_dir):
        at = int(path.stem.removeprefix("step-"))
        if at > step or (at == step and not (eval_every and at % eval_every == 0)):
            path.unlink()


def _write_average(run_dir: Path, keep: int) -> list[int]:
    """averaged.safetensors: the mean of the last ``keep`` copies (translation.
    average_checkpoints), with the last copy's metadata (its step and tied names)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from scratchformer.translation import average_checkpoints
    files = _checkpoint_files(run_dir)[-keep:]
    with safe_open(str(files[-1]), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = average_checkpoints(files)
    _replace(run_dir / AVERAGED, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return [int(path.stem.removeprefix("step-")) for path in files]


@torch.no_grad()
def translation_scores(model, pairs, src_vocab, tgt_vocab, max_len: int, *,
                       beam: int | None = None, length_penalty: float = 0.6,
                       batch_size: int = 64) -> dict[str, Any]:
    """Translate the sources of ``pairs`` (greedy, or beam search with ``beam`` hypotheses)
    and score them against the targets: translation.bleu_scores (``bleu`` with its
    ``signature``, ``tokenised_bleu``, ``chrf``, ``n``) plus ``exact_match``. Each batch of
    similar lengths decodes at most min(2 S + 8, ``max_len``) tokens (S: its longest source)."""
    from torch.nn.utils.rnn import pad_sequence

    from scratchformer import decoding, translation
    sources = [src_vocab.encode(s, eos=True) for s, _ in pairs]
    order = sorted(range(len(pairs)), key=lambda i: len(sources[i]))
    device = next(model.parameters()).device
    hypotheses = [""] * len(pairs)
    for b in range(0, len(order), batch_size):
        chunk = order[b:b + batch_size]
        src = pad_sequence([torch.tensor(sources[i]) for i in chunk], batch_first=True,
                           padding_value=src_vocab.pad_id).to(device)       # (B, S)
        limit = min(2 * src.shape[1] + 8, max_len)
        if beam is None:
            out = decoding.greedy_decode(model, src, limit, tgt_vocab.bos_id, tgt_vocab.eos_id)
            rows = [row.tolist() for row in out.cpu()]
        else:
            best = decoding.beam_search(model, src, beam, limit, bos_id=tgt_vocab.bos_id,
                                        eos_id=tgt_vocab.eos_id, length_penalty=length_penalty)
            rows = [tokens.tolist() for tokens, _ in best]
        for i, row in zip(chunk, rows):
            hypotheses[i] = tgt_vocab.decode(row)
    references = [t for _, t in pairs]
    scores = translation.bleu_scores(hypotheses, references)
    exact = sum(h == r for h, r in zip(hypotheses, references)) / max(len(pairs), 1)
    return {**scores, "exact_match": exact}


def _check_resumable(run_dir: Path, stored, model_dict, task_data, fingerprint) -> None:
    """RunError unless the stored run has this model and this task's vocabularies and data."""
    if stored["model"] != model_dict:
        changed = [k for k in model_dict if stored["model"].get(k) != model_dict[k]]
        raise RunError(f"{run_dir / CONFIG} does not match its options "
                       f"({', '.join(changed)} differ); the run directory was edited")
    src_vocab, tgt_vocab = _read_vocabs(run_dir, stored)
    if src_vocab != task_data.src_vocab or tgt_vocab != task_data.tgt_vocab:
        raise RunError(f"the vocabulary in {run_dir / VOCAB} does not match the "
                       f"{task_data.task} task's; this run cannot be resumed with this "
                       "version of scratchformer")
    if stored.get("data", {}).get("fingerprint") not in (None, fingerprint):
        raise RunError(f"the {task_data.task} data made now differs from the data of the run "
                       f"in {run_dir}; resuming would not continue the same run")


# --- using a trained run -----------------------------------------------------------------------

def _decode_limit(run: Run, texts: list[str]) -> int:
    """RunError on unknown characters or a text too long for learned positions; else the most
    tokens to decode (training.translate's 2 S + 8, within the learned positions)."""
    from scratchformer.data import UnknownCharactersError
    unknown = list(dict.fromkeys(c for text in texts for c in run.src_vocab.unknown(text)))
    if unknown:
        raise RunError(str(UnknownCharactersError(unknown, run.src_vocab.chars)))
    longest = max((len(run.src_vocab.encode(text)) + 1 for text in texts),  # + </s>
                  default=1)
    limit = 2 * longest + 8
    if run.config["model"].get("positional") == "learned":
        most = run.config["model"]["max_len"]
        if longest > most:
            unit = "characters" if hasattr(run.src_vocab, "tokens") else "tokens"
            raise RunError(f"a text of {longest - 1} {unit} is too long for this run: its "
                           f"learned positions end at {most} tokens")
        limit = min(limit, most)
    return limit


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def translate_texts(run: Run, texts: list[str]) -> list[str]:
    """Greedy translations of ``texts`` by the run's model (RunError on unknown characters)."""
    from scratchformer import training
    limit = _decode_limit(run, texts)
    return training.translate(run.model, list(texts), run.src_vocab, run.tgt_vocab,
                              max_len=limit)


def check_decoding(*, beam: int | None = None, length_penalty: float | None = None,
                   sample: bool = False, temperature: float | None = None,
                   top_k: int | None = None, top_p: float | None = None,
                   seed: int | None = None) -> None:
    """RunError (one line, naming the option) unless the decoding options of ``scratchformer
    translate`` make sense: ``beam`` >= 1, ``length_penalty`` >= 0 and only with ``beam``;
    ``temperature`` > 0, ``top_k`` >= 1, ``top_p`` in (0, 1] and ``seed`` >= 0 only with
    ``sample``; never ``beam`` and ``sample`` together. None = not given."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value)

    def integer(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if beam is not None and sample:
        raise RunError("--beam and --sample exclude each other: beam search keeps the most "
                       "probable outputs, sampling draws them at random; choose one")
    if beam is not None and not (integer(beam) and beam >= 1):
        raise RunError(f"--beam must be a positive integer (the number of hypotheses kept; "
                       f"1 is greedy decoding), got {beam!r}")
    if length_penalty is not None:
        if beam is None:
            raise RunError("--length-penalty applies to beam search only: add --beam N")
        if not (number(length_penalty) and length_penalty >= 0):
            raise RunError(f"--length-penalty must be a number >= 0 (GNMT's alpha; 0: no "
                           f"normalisation), got {length_penalty!r}")
    given = [(flag, value) for flag, value in (("--temperature", temperature),
                                               ("--top-k", top_k), ("--top-p", top_p),
                                               ("--seed", seed)) if value is not None]
    if given and not sample:
        raise RunError(f"{given[0][0]} applies to sampling only: add --sample")
    if temperature is not None and not (number(temperature) and temperature > 0):
        raise RunError(f"--temperature must be a number > 0, got {temperature!r}")
    if top_k is not None and not (integer(top_k) and top_k >= 1):
        raise RunError(f"--top-k must be a positive integer (the most probable tokens kept), "
                       f"got {top_k!r}")
    if top_p is not None and not (number(top_p) and 0 < top_p <= 1):
        raise RunError(f"--top-p must be in (0, 1] (the probability mass kept), got {top_p!r}")
    if seed is not None and not (integer(seed) and seed >= 0):
        raise RunError(f"--seed must be an integer >= 0, got {seed!r}")


def _source_batch(run: Run, texts: list[str]) -> torch.Tensor:
    """The texts as one right-padded batch of source ids ``(B, S)`` on the run's device."""
    from torch.nn.utils.rnn import pad_sequence
    rows = [torch.tensor(run.src_vocab.encode(text, eos=True)) for text in texts]
    return pad_sequence(rows, batch_first=True, padding_value=run.src_vocab.pad_id).to(run.device)


def beam_texts(run: Run, texts: list[str], beam_size: int, length_penalty: float = 0.6
               ) -> list[tuple[str, float]]:
    """The best beam-search output of each text and its score: the sum of the log-probabilities
    divided by GNMT's length penalty ((5 + |y|) / 6) ** length_penalty, |y| counting </s>
    (chapter 13). All texts and beams are decoded as one batch."""
    from scratchformer import decoding
    check_decoding(beam=beam_size, length_penalty=length_penalty)
    texts = list(texts)
    limit = _decode_limit(run, texts)
    best = decoding.beam_search(run.model, _source_batch(run, texts), beam_size, limit,
                                bos_id=run.tgt_vocab.bos_id, eos_id=run.tgt_vocab.eos_id,
                                length_penalty=length_penalty)
    return [(run.tgt_vocab.decode(tokens.tolist()), float(score)) for tokens, score in best]


def sample_texts(run: Run, texts: list[str], temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0) -> list[str]:
    """One sampled output per text (chapter 13's ``sample``: temperature, then top-k, then
    top-p), drawn with a generator seeded with ``seed``: the same seed gives the same outputs
    on the same device."""
    from scratchformer import decoding
    check_decoding(sample=True, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    texts = list(texts)
    limit = _decode_limit(run, texts)
    generator = torch.Generator(device=run.device).manual_seed(seed)
    out = decoding.sample(run.model, _source_batch(run, texts), limit,
                          bos_id=run.tgt_vocab.bos_id, eos_id=run.tgt_vocab.eos_id,
                          temperature=temperature, top_k=top_k, top_p=top_p,
                          generator=generator)
    return [run.tgt_vocab.decode(row.tolist()) for row in out.cpu()]


def _names(vocab, ids: list[int]) -> list[str]:
    """The token of each id (a character, with ␣ for a space, or a subword piece)."""
    names = vocab.tokens if hasattr(vocab, "tokens") else vocab.pieces
    return ["␣" if names[i] == " " else names[i] for i in ids]


def plot_attention(run: Run, texts: list[str], path: str | Path) -> list[str]:
    """Save the cross-attention of every decoder layer (mean over heads) for each text: rows are
    the predicted tokens, columns the source tokens (characters or subwords). Returns the
    translations."""
    from matplotlib.figure import Figure

    from scratchformer import training
    texts = list(texts)[:4]
    limit = _decode_limit(run, texts)
    model, device = run.model, run.device
    rows = []
    for text in texts:
        src = torch.tensor([run.src_vocab.encode(text, eos=True)], device=device)
        out = training.greedy_decode(model, src, max_len=limit, bos_id=run.tgt_vocab.bos_id,
                                     eos_id=run.tgt_vocab.eos_id)[0].tolist()
        if run.tgt_vocab.eos_id in out:
            out = out[:out.index(run.tgt_vocab.eos_id) + 1]
        tgt_in = torch.tensor([[run.tgt_vocab.bos_id, *out[:-1]]], device=device)
        weights = training.cross_attention_weights(model, src, tgt_in)   # (L, 1, H, T, S)
        rows.append((text, out, weights[:, 0].mean(dim=1).float().cpu(),   # (L, T, S)
                     src[0].tolist()))
    layers = rows[0][2].shape[0]
    fig = Figure(figsize=(2.2 + 2.6 * layers, 0.6 + 2.6 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), layers, squeeze=False)
    image = None
    for r, (text, out, weights, src_ids) in enumerate(rows):
        predicted = _names(run.tgt_vocab, out)
        source = _names(run.src_vocab, src_ids)    # characters or subwords, then </s>
        for layer in range(layers):
            ax = axes[r][layer]
            image = ax.imshow(weights[layer].numpy(), vmin=0.0, vmax=1.0, cmap="viridis",
                              aspect="auto")
            ax.set_xticks(range(len(source)), source, fontsize=8 if len(source) < 24 else 6)
            ax.get_xticklabels()[-1].set_rotation(90)                  # </s>
            ax.set_yticks(range(len(predicted)), predicted, fontsize=8)
            shown = _shorten(run.tgt_vocab.decode(out), 24)
            ax.set_title(f"{_shorten(text, 24)!r} -> {shown!r}\ndecoder layer {layer + 1}",
                         fontsize=9)
            if layer == 0:
                ax.set_ylabel("predicted token")
            if r == len(rows) - 1:
                ax.set_xlabel("source character" if hasattr(run.src_vocab, "tokens")
                              else "source token")
    fig.colorbar(image, ax=axes, shrink=0.8, label="cross-attention weight (mean over heads)")
    path = Path(path)
    try:
        _replace(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    except OSError as error:
        raise RunError(f"cannot write {path}: {error.strerror or error}") from None
    return [run.tgt_vocab.decode(out) for _, out, _, _ in rows]


def evaluate_run(run: Run, split: str = "test", beam: int | None = None,
                 length_penalty: float | None = None,
                 data_dir: str | Path | None = None) -> dict[str, Any]:
    """Exact match and token accuracy of the run's model on a split of its task's data; for a
    translation run, BLEU (with SacreBLEU's signature), tokenised BLEU and chrF of beam
    search (``beam`` hypotheses, default 4; GNMT's ``length_penalty``, default 0.6), on the
    data in ``data_dir`` (default: the run's)."""
    from scratchformer import training
    if split not in SPLITS:
        raise RunError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if run.task in TRANSLATION_TASKS:
        beam = 4 if beam is None else beam
        alpha = 0.6 if length_penalty is None else length_penalty
        check_decoding(beam=beam, length_penalty=alpha)
        options = run.options if data_dir is None else {**run.options, "data_dir": data_dir}
        pairs = _translation_pairs(run.task, options, split)
        scores = translation_scores(run.model, pairs, run.src_vocab, run.tgt_vocab,
                                    run.config["model"]["max_len"], beam=beam,
                                    length_penalty=alpha)
        return {"run": str(run.path), "task": run.task, "split": split, "step": run.step,
                "weights": run.weights, "beam": beam, "length_penalty": alpha, **scores}
    if beam is not None or length_penalty is not None or data_dir is not None:
        raise RunError("--beam, --length-penalty and --data-dir apply to translation runs "
                       f"(multi30k); a {run.task} run is scored by greedy exact match")
    task_data = _make_data(run.task, run.options)
    if task_data.src_vocab != run.src_vocab or task_data.tgt_vocab != run.tgt_vocab:
        raise RunError(f"the vocabulary in {run.path / VOCAB} does not match the "
                       f"{run.task} task's")
    pairs = getattr(task_data, split)
    result = training.evaluate(run.model, pairs, run.src_vocab, run.tgt_vocab)
    return {"run": str(run.path), "task": run.task, "split": split, "step": run.step,
            "exact_match": float(result["exact_match"]),
            "token_accuracy": float(result["token_accuracy"]), "n": int(result["n"])}
