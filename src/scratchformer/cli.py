"""The ``scratchformer`` command: ``scratchformer check NN`` validates the learner notebook of
chapter NN with nbval (``pytest --nbval-lax notebooks/exercises/NN_slug.ipynb``); it passes
only when every exercise in it is solved."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

__all__ = ["main", "find_exercise_notebook"]


class CLIError(Exception):
    """A problem with the user's input or environment, shown without a traceback."""


def find_exercise_notebook(chapter: str, root: Path) -> Path:
    """``notebooks/exercises/NN_*.ipynb`` under ``root`` for chapter ``NN`` (or a path to a notebook)."""
    as_path = Path(chapter)
    if as_path.suffix == ".ipynb":
        if not as_path.exists():
            raise CLIError(f"no such notebook: {as_path}")
        return as_path
    if not chapter.isdigit():
        raise CLIError(f"chapter must be a number such as 02 or a path to a .ipynb file, got {chapter!r}")
    folder = root / "notebooks" / "exercises"
    if not folder.is_dir():
        raise CLIError(
            f"no folder {folder}. Run this command from the root of the book's repository "
            "(the folder with _config.yml), or pass --root, or give the notebook's path."
        )
    matches = sorted(folder.glob(f"{int(chapter):02d}_*.ipynb"))
    if not matches:
        available = ", ".join(p.name[:2] for p in sorted(folder.glob("[0-9][0-9]_*.ipynb")))
        raise CLIError(f"no learner notebook for chapter {chapter} in {folder}; available: {available or 'none'}")
    return matches[0]


def check(args: argparse.Namespace) -> int:
    notebook = find_exercise_notebook(args.chapter, Path(args.root))
    if importlib.util.find_spec("nbval") is None:
        raise CLIError('nbval is not installed. Install it with: pip install "nbval>=0.10" pytest')
    command = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
               "-p", "no:cacheprovider", "-o", "addopts=", "-q", str(notebook)]
    print("running:", " ".join(command[2:]), flush=True)
    code = subprocess.run(command, check=False).returncode
    if code == 0:
        print(f"\n✅ {notebook.name}: every cell runs and every exercise passes.")
    else:
        print(
            f"\n❌ {notebook.name}: some cells failed (see above). Cells whose check says "
            "'not attempted' still hold a `raise NotImplementedError` stub; 'wrong' comes with a hint."
        )
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scratchformer", description="Transformer, Piece by Piece")
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="validate a learner (exercise) notebook with nbval")
    check_parser.add_argument("chapter", help="chapter number (e.g. 02) or path to a .ipynb file")
    check_parser.add_argument("--root", default=".", help="repository root (default: current folder)")
    check_parser.set_defaults(run=check)
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
