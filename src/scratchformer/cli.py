"""The ``scratchformer`` command: ``check [NN]`` reports the exercises of the learner notebooks;
``train``, ``translate`` and ``evaluate`` train a model on a generated task or Multi30k (also
data-parallel under torchrun) and use it."""

# `scratchformer check NN` runs the learner notebook of chapter NN top to bottom and prints one
# line per exercise (passed / not attempted / wrong, with the hint), then a summary; it exits 0
# only when every exercise passed and every other cell ran. `-v` shows nbval's full output
# instead (`pytest --nbval-lax`). `scratchformer check` does the same for every chapter.
# `scratchformer train|translate|evaluate` are thin wrappers around scratchformer.runs (imported
# only when used, so `check` and `--help` start without torch). Every problem with the user's
# input ends in exit code 2 and one line on stderr, without a traceback.
# (Module docstrings stay at most 3 lines: longer ones make nbdev-export rewrite the package
# docstring in __init__.py.)

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["main", "find_exercise_notebook", "exercise_notebooks", "run_exercises", "train",
           "translate", "evaluate"]

CHECK_CALL = re.compile(r"^checks\.(\w+)\(", re.M)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class CLIError(Exception):
    """A problem with the user's input or environment, shown without a traceback."""


def _exercise_folder(root: Path) -> Path:
    folder = root / "notebooks" / "exercises"
    if not folder.is_dir():
        raise CLIError(
            f"no folder {folder}. Run this command from the root of the book's repository "
            "(the folder with _config.yml), or pass --root, or give the notebook's path."
        )
    return folder


def exercise_notebooks(root: Path) -> list[Path]:
    """Every learner notebook ``notebooks/exercises/NN_*.ipynb`` under ``root``, in order."""
    return sorted(_exercise_folder(root).glob("[0-9][0-9]_*.ipynb"))


def find_exercise_notebook(chapter: str, root: Path) -> Path:
    """``notebooks/exercises/NN_*.ipynb`` under ``root`` for chapter ``NN`` (or a path to a notebook)."""
    as_path = Path(chapter)
    if as_path.suffix == ".ipynb":
        if not as_path.exists():
            raise CLIError(f"no such notebook: {as_path}")
        return as_path
    if not chapter.isdigit():
        raise CLIError(f"chapter must be a number such as 02 or a path to a .ipynb file, got {chapter!r}")
    folder = _exercise_folder(root)
    matches = sorted(folder.glob(f"{int(chapter):02d}_*.ipynb"))
    if not matches:
        available = ", ".join(p.name[:2] for p in exercise_notebooks(root))
        raise CLIError(f"no learner notebook for chapter {chapter} in {folder}; available: {available or 'none'}")
    return matches[0]


@dataclass
class Outcome:
    """One exercise's result, or a failing cell that is not a check."""

    label: str          # "Exercise 6.1 (layer_norm)" or "cell 12"
    status: str         # "passed", "not attempted", "wrong", "error"
    detail: str = ""


@dataclass
class Report:
    notebook: Path
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def exercises(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.label.startswith("Exercise")]

    @property
    def ok(self) -> bool:
        return bool(self.exercises) and all(o.status == "passed" for o in self.outcomes)


def _text(outputs) -> str:
    parts = []
    for output in outputs:
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
    return ANSI.sub("", "".join(parts))


def run_exercises(notebook: Path, timeout: int = 600) -> Report:
    """Execute ``notebook`` in a fresh kernel (errors allowed) and classify every check cell."""
    import nbformat
    from nbclient import NotebookClient

    from scratchformer.checks import REGISTRY

    nb = nbformat.read(notebook, as_version=4)
    kernel = os.environ.get("SCRATCHFORMER_KERNEL", "python3")
    NotebookClient(nb, timeout=timeout, kernel_name=kernel, allow_errors=True,
                   resources={"metadata": {"path": str(notebook.parent)}}).execute()
    report = Report(notebook)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.get("output_type") == "error"]
        call = CHECK_CALL.search(cell.source)
        if call and call.group(1) in REGISTRY:
            name = call.group(1)
            label = f"Exercise {REGISTRY[name][0]} ({name})"
            if not errors:
                passed = "✅" in _text(cell.outputs)
                report.outcomes.append(Outcome(label, "passed" if passed else "error",
                                               "" if passed else "the check printed no result"))
                continue
            error = errors[0]
            message = ANSI.sub("", error.get("evalue", "")).strip().removeprefix(f"{name}: ")
            status = {"ExerciseNotAttempted": "not attempted", "ExerciseWrong": "wrong"}.get(
                error.get("ename"), "error")
            detail = message if status != "error" else f"{error.get('ename')}: {message}"
            report.outcomes.append(Outcome(label, status, detail))
        elif errors:
            error = errors[0]
            first_line = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            report.outcomes.append(Outcome(
                f"cell {index} (`{first_line[:50]}`)", "error",
                f"{error.get('ename')}: {ANSI.sub('', error.get('evalue', ''))}"))
    return report


MARKS = {"passed": "✅", "not attempted": "⏳", "wrong": "❌", "error": "💥"}


def _print_report(report: Report) -> None:
    print(f"{report.notebook.name}:")
    for outcome in report.outcomes:
        line = f"  {MARKS[outcome.status]} {outcome.label}: {outcome.status}"
        if outcome.status in ("wrong", "error") and outcome.detail:
            detail = " ".join(outcome.detail.split())
            line += f" — {detail}"
        print(line)
    total = len(report.exercises)
    print(f"  {report.count('passed')} of {total} exercises passed, "
          f"{report.count('not attempted')} not attempted, {report.count('wrong')} wrong"
          + (f", {report.count('error')} other failing cells" if report.count("error") else ""))


def _nbval(notebook: Path) -> int:
    if importlib.util.find_spec("nbval") is None:
        raise CLIError('nbval is not installed. Install it with: pip install "nbval>=0.10" pytest')
    command = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
               "-p", "no:cacheprovider", "-o", "addopts=", "-v", str(notebook)]
    print("running:", " ".join(command[2:]), flush=True)
    return subprocess.run(command, check=False).returncode


def check(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("nbclient") is None:
        raise CLIError('nbclient is not installed. Install it with: pip install "nbval>=0.10" pytest')
    os.environ.setdefault("SCRATCHFORMER_FAST", "1")   # the demos' small configuration
    root = Path(args.root)
    if args.chapter is None:
        return _check_all(root)
    notebook = find_exercise_notebook(args.chapter, root)
    if args.verbose:
        return _nbval(notebook)
    print(f"checking {notebook} ...", flush=True)
    report = run_exercises(notebook)
    _print_report(report)
    if report.ok:
        print(f"✅ {notebook.name}: every exercise passes.")
        return 0
    print(f"❌ {notebook.name}: not done yet. 'not attempted' = the cell still holds its "
          "`raise NotImplementedError` stub; 'wrong' comes with a hint. Details: "
          f"scratchformer check {notebook.name[:2]} -v")
    return 1


def _check_all(root: Path) -> int:
    notebooks = exercise_notebooks(root)
    if not notebooks:
        raise CLIError(f"no learner notebooks in {_exercise_folder(root)}")
    print(f"{'chapter':<34} {'exercises':>9} {'passed':>7} {'to do':>6} {'wrong':>6} {'errors':>7}")
    all_ok, done, total = True, 0, 0
    for notebook in notebooks:
        report = run_exercises(notebook)
        n = len(report.exercises)
        done, total = done + report.count("passed"), total + n
        all_ok &= report.ok
        print(f"{notebook.stem:<34} {n:>9} {report.count('passed'):>7} "
              f"{report.count('not attempted'):>6} {report.count('wrong'):>6} "
              f"{report.count('error'):>7}", flush=True)
    print(f"{'total':<34} {total:>9} {done:>7}   ({done / max(total, 1):.0%} done)")
    return 0 if all_ok else 1


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line on stderr (exit code 2), like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


TRAIN_OPTIONS = [  # (option, type, help); None = the task's recipe (chapter 12) decides
    ("--steps", int, "optimizer steps in all (with --resume: the step to continue to)"),
    ("--batch-size", int, "sequences per step (with --distributed: of all processes "
     "together)"),
    ("--d-model", int, "model width D"),
    ("--heads", int, "attention heads H (must divide --d-model)"),
    ("--layers", int, "encoder layers = decoder layers"),
    ("--d-ff", int, "hidden width of the feed-forward networks"),
    ("--dropout", float, "dropout probability, in [0, 1)"),
    ("--lr", float, "peak learning rate, reached after --warmup steps (Noam schedule)"),
    ("--warmup", int, "warmup steps"),
    ("--label-smoothing", float, "label smoothing epsilon, in [0, 1)"),
    ("--n-train", int, "training pairs to generate (multi30k: the first N pairs)"),
    ("--max-len", int, "longest sequence (positions of --positional learned)"),
    ("--seed", int, "seed of the data, the initial weights and dropout (default 0)"),
    ("--threads", int, "CPU threads for torch (default: torch's, i.e. OMP_NUM_THREADS)"),
    ("--log-every", int, "write a line to metrics.jsonl every N steps"),
    ("--eval-every", int, "evaluate exact match and save a checkpoint every N steps (0: only at "
     "the end)"),
]


def _runs():
    from scratchformer import runs
    return runs


def _wrap(command):
    """Turn the run module's RunError into a CLIError (one line, exit code 2)."""
    def run(args: argparse.Namespace) -> int:
        runs = _runs()
        try:
            return command(args, runs)
        except runs.RunError as error:
            raise CLIError(str(error)) from None
    return run


def train(args: argparse.Namespace, runs) -> int:
    if args.resume is not None and args.out is not None:
        raise CLIError("give --out DIR for a new run or --resume DIR to continue one, not both")
    given = {key: getattr(args, key, None) for key in runs.OPTIONS}
    task = args.task
    if args.sample:
        if args.resume is not None:
            raise CLIError("--sample chooses the data of a new run; leave it out with --resume")
        if task != "multi30k":
            raise CLIError("--sample goes with --task multi30k (the project's own sample of "
                           "German -> English sentences)")
        task = "multi30k-sample"
    try:
        summary = runs.train(task, given, out=args.out, resume=args.resume,
                             progress=not args.no_progress, restore_sigint=False,
                             distributed=args.distributed)
    except runs.RunError:
        # Under torchrun, rank 0 prints the error: every rank makes the same checks, and a
        # failure on rank 0 alone is passed to the others (runs._on_main).
        if args.distributed and os.environ.get("RANK", "0") != "0":
            return 2
        raise
    # The run is saved; from here to the exit, Ctrl-C is ignored (Python's shutdown would
    # otherwise reset the handler and let a second Ctrl-C kill the process by signal).
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return 130 if summary["interrupted"] else 0


def translate(args: argparse.Namespace, runs) -> int:
    runs.check_decoding(beam=args.beam, length_penalty=args.length_penalty, sample=args.sample,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        seed=args.seed)
    if args.show_attention and (args.beam is not None or args.sample):
        raise CLIError("--show-attention shows greedy decoding; leave out --beam and --sample")
    run = runs.load_run(args.run_dir, device=args.device)
    if args.beam is not None:
        alpha = 0.6 if args.length_penalty is None else args.length_penalty
        for text, score in runs.beam_texts(run, args.texts, args.beam, alpha):
            print(f"{text}\tscore {score:.4f} (beam {args.beam}, length penalty "
                  f"alpha {alpha:g})")
        return 0
    if args.sample:
        options = {"temperature": 1.0 if args.temperature is None else args.temperature,
                   "top_k": args.top_k, "top_p": args.top_p,
                   "seed": 0 if args.seed is None else args.seed}
        for line in runs.sample_texts(run, args.texts, **options):
            print(line)
        print("sampled with " + ", ".join(f"{k.replace('_', '-')} {v:g}"
                                          for k, v in options.items() if v is not None),
              file=sys.stderr)
        return 0
    if args.show_attention:
        runs.plot_attention(run, args.texts, args.show_attention)
    for line in runs.translate_texts(run, args.texts):
        print(line)
    if args.show_attention:
        print(f"cross-attention saved in {args.show_attention}", file=sys.stderr)
    return 0


def evaluate(args: argparse.Namespace, runs) -> int:
    import json
    run = runs.load_run(args.run_dir, device=args.device)
    result = runs.evaluate_run(run, args.split, beam=args.beam,
                               length_penalty=args.length_penalty, data_dir=args.data_dir)
    if args.json:
        print(json.dumps(result))
    elif "bleu" in result:
        print(f"BLEU {result['bleu']:.2f}, tokenised BLEU {result['tokenised_bleu']:.2f}, "
              f"chrF {result['chrf']:.2f} on the {result['split']} split ({result['n']} "
              f"sentences) of {result['task']}; beam {result['beam']}, length penalty alpha "
              f"{result['length_penalty']:g}; run {result['run']} at step {result['step']} "
              f"({result['weights']})")
        print(f"SacreBLEU signature: {result['signature']}")
    else:
        print(f"exact match {result['exact_match']:.2%}, token accuracy "
              f"{result['token_accuracy']:.2%} on the {result['split']} split ({result['n']} "
              f"pairs) of {result['task']}; run {result['run']} at step {result['step']}")
    return 0


def _add_run_commands(commands) -> None:
    device_help = "auto (cuda if available), cpu or cuda (default: auto)"
    p = commands.add_parser(
        "train", help="train a Transformer on a generated task or Multi30k (a run directory)",
        description="Train a Transformer on a generated task (chapter 12) or on Multi30k "
        "German -> English (chapter 16). Defaults: the task's recipe; every option below "
        "overrides it. The run directory gets config.json, vocab.json, model.safetensors, "
        "state.pt, metrics.jsonl and curves.png. Ctrl-C saves a checkpoint and stops; "
        "--resume DIR --steps N continues it. Data-parallel on N GPUs or CPU processes: "
        "torchrun --nproc_per_node=N -m scratchformer train --distributed ...")
    p.add_argument("--task", default=None,
                   help="copy, reverse, de2num, date or multi30k (German -> English, real "
                   "data: downloaded, or the project's own sample with --sample)")
    p.add_argument("--sample", action="store_true", default=None,
                   help="with --task multi30k: train on the project's own small sample (no "
                   "download; a CPU recipe) instead of Multi30k")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="multi30k: the data folder (default: $SCRATCHFORMER_DATA, else the "
                   "user's cache folder + /scratchformer)")
    p.add_argument("--vocab-size", type=int, default=None, metavar="N",
                   help="multi30k: subword pieces of the shared BPE vocabulary")
    p.add_argument("--average-last", type=int, default=None, metavar="K",
                   help="keep the last K checkpoints and write their average to "
                   "averaged.safetensors at the end (0: off)")
    for option, kind, text in TRAIN_OPTIONS:
        p.add_argument(option, type=kind, default=None, metavar="N" if kind is int else "X",
                       help=text)
    p.add_argument("--positional", choices=("sinusoidal", "learned", "rotary"), default=None,
                   help="position encoding")
    p.add_argument("--norm-first", action=argparse.BooleanOptionalAction, default=None,
                   help="pre-LN (--norm-first) or post-LN (--no-norm-first)")
    p.add_argument("--device", default=None, help=device_help)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="autocast precision (fp16: CUDA only, with a gradient scaler)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model (for GPUs; on the CPU it compiles longer "
                   "than these small runs train)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="new run directory (default: runs/TASK-DATE-TIME)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run in DIR up to --steps")
    p.add_argument("--accumulate", type=int, default=None, metavar="K",
                   help="split each batch into K micro-batches whose gradients add up (the "
                   "same step with less memory; default 1)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training in the processes that torchrun starts: "
                   "torchrun --nproc_per_node=N -m scratchformer train --distributed ...; "
                   "each takes its share of every batch, rank 0 writes the run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_wrap(train))

    p = commands.add_parser(
        "translate", help="translate texts with a trained run",
        description="Print the translation of each TEXT, one per line: greedy decoding by "
        "default; --beam N prints beam search's best output and its score (log-probability "
        "over GNMT's length penalty ((5 + |y|) / 6) ** alpha); --sample draws one output at "
        "random (reproducible with --seed).")
    p.add_argument("--run", dest="run_dir", required=True, metavar="DIR",
                   help="run directory (made by scratchformer train)")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="source text(s)")
    p.add_argument("--show-attention", default=None, metavar="PNG",
                   help="save the cross-attention of each decoder layer (mean over heads) "
                   "to this image: rows = predicted tokens, columns = source characters (the "
                   "first 4 texts)")
    p.add_argument("--beam", type=int, default=None, metavar="N",
                   help="beam search with N hypotheses (1: greedy)")
    p.add_argument("--length-penalty", type=float, default=None, metavar="A",
                   help="with --beam: GNMT's alpha, score = log p / ((5 + |y|) / 6) ** A "
                   "(default 0.6; 0: the plain log-probability)")
    p.add_argument("--sample", action="store_true",
                   help="draw each output at random instead (with the options below)")
    p.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="with --sample: divide the logits by T > 0 (default 1)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="with --sample: draw among the K most probable tokens only")
    p.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="with --sample: draw among the most probable tokens that together "
                   "have probability >= P, in (0, 1] (nucleus sampling)")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="with --sample: the random seed (default 0)")
    p.add_argument("--device", default="auto", help=device_help)
    p.set_defaults(run=_wrap(translate))

    p = commands.add_parser("evaluate", help="exact match and token accuracy of a trained run",
                            description="Greedy exact match and teacher-forced token accuracy "
                            "on a split of the run's task.")
    p.add_argument("--run", dest="run_dir", required=True, metavar="DIR",
                   help="run directory (made by scratchformer train)")
    p.add_argument("--split", choices=("train", "valid", "test"), default="test",
                   help="which split (default: test)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--beam", type=int, default=None, metavar="N",
                   help="translation runs (multi30k): beam search with N hypotheses "
                   "(default 4)")
    p.add_argument("--length-penalty", type=float, default=None, metavar="A",
                   help="translation runs: GNMT's alpha of beam search (default 0.6)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="translation runs: the data folder (default: the run's)")
    p.add_argument("--device", default="auto", help=device_help)
    p.set_defaults(run=_wrap(evaluate))


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="scratchformer", description="Transformer, Piece by Piece")
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser(
        "check", help="check the exercises of a learner notebook (all chapters if no number)")
    check_parser.add_argument("chapter", nargs="?", default=None,
                              help="chapter number (e.g. 02) or path to a .ipynb file; omit for all")
    check_parser.add_argument("--root", default=".", help="repository root (default: current folder)")
    check_parser.add_argument("-v", "--verbose", action="store_true",
                              help="show nbval's full output for one chapter instead of the summary")
    check_parser.set_defaults(run=check)
    _add_run_commands(commands)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except CLIError as error:
        print(f"scratchformer {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
