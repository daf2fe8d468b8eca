"""``python -m scratchformer`` and ``torchrun -m scratchformer``: the ``scratchformer`` command."""

import sys

from scratchformer.cli import main

if __name__ == "__main__":
    sys.exit(main())
