"""Point the book at another GitHub repository (a fork): launch buttons, setup cells, package.

    python tools/set_repository_url.py https://github.com/YOU/REPO [--root DIR]

The repository URL is written once in _config.yml and repeated, by design, in pyproject.toml and
in the setup cell of every chapter and learner notebook (the cell installs scratchformer from
that repository on Colab). This replaces the configured URL with the new one in all of them.
The book workflow runs it with the repository it builds, so a fork's published book sends its
readers to the fork; run it yourself and commit to make the change permanent.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

URL_PATTERN = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+")


def files_to_change(root: Path) -> list[Path]:
    """Every file that repeats the repository URL."""
    notebooks = root / "notebooks"
    return [root / "_config.yml", root / "pyproject.toml",
            *sorted(notebooks.glob("[0-9][0-9]_*.ipynb")),
            *sorted((notebooks / "exercises").glob("[0-9][0-9]_*.ipynb"))]


def set_repository_url(new: str, root: Path) -> list[Path]:
    """Replace the URL configured in ``root/_config.yml`` by ``new``; return the changed files."""
    new = new.rstrip("/").removesuffix(".git")
    if not URL_PATTERN.fullmatch(new):
        raise ValueError(f"{new!r} is not a GitHub repository URL; give it as "
                         "https://github.com/OWNER/REPO")
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    old = config["repository"]["url"]
    changed = []
    for path in files_to_change(root):
        text = path.read_text(encoding="utf-8")
        if old != new and old in text:
            path.write_text(text.replace(old, new), encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="https://github.com/OWNER/REPO")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the book's root directory (default: this checkout)")
    args = parser.parse_args(argv)
    try:
        changed = set_repository_url(args.url, args.root)
    except ValueError as error:
        print(f"set_repository_url: {error}", file=sys.stderr)
        return 2
    print(f"{len(changed)} file(s) now point at {args.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
