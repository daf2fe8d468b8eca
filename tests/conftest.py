"""Test-wide settings: fast notebooks, one thread per xdist worker, shared helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Notebook kernels started by nbval or nbclient inherit this environment.
os.environ["SCRATCHFORMER_FAST"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two torch processes with 2 OpenMP threads each on 2 cores run 2-5x slower than with one.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))  # the maintainer tools (nbtools, make_exercises, export)

import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
