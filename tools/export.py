"""`make export`: notebooks -> src/scratchformer with nbdev (the same as a plain `nbdev-export`).

Each chapter notebook starts with ``#| default_exp <module>`` and its ``#| export`` cells go
to ``src/scratchformer/<module>.py``. The exercise markers are dropped by the export processor
``scratchformer._nbdev_procs.strip_solution_markers`` configured in pyproject.toml.
"""

from __future__ import annotations

import sys

from nbdev.doclinks import nbdev_export

from nbtools import ROOT


def main() -> int:
    nbdev_export()
    (ROOT / "notebooks" / "llms.txt").unlink(missing_ok=True)  # nbdev's LLM index (gitignored)
    return 0


if __name__ == "__main__":
    sys.exit(main())
