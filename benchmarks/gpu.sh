#!/usr/bin/env bash
# The GPU benchmarks: attention paths, training step and greedy decoding on CUDA, the peak
# memory of a step, and a short Multi30k training run in bf16. About 5-8 minutes on one
# H100-class GPU. Writes benchmarks/results/gpu/*.json (or $OUT_DIR).
#
# Usage (from the repository root, on a machine with an NVIDIA GPU and a CUDA build of torch):
#   bash benchmarks/gpu.sh
#   MULTI30K_STEPS=300 bash benchmarks/gpu.sh           # a shorter training run
#   MULTI30K_ARGS="--sample" bash benchmarks/gpu.sh     # the project's own sample, no download
#   PYTHON=python3 OUT_DIR=/tmp/gpu bash benchmarks/gpu.sh
# Without CUDA it stops at once with exit status 2 and says why.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
OUT=${OUT_DIR:-benchmarks/results/gpu}
STEPS=${MULTI30K_STEPS:-600}
EXTRA=${MULTI30K_ARGS:-}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
then
    version=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "not found")
    echo "gpu.sh: no CUDA device: torch.cuda.is_available() is False (python: $PY, torch:" \
         "$version). Run it on a machine with an NVIDIA GPU and a CUDA build of torch" \
         "(e.g. Colab with a GPU runtime); on a CPU run 'make bench' instead." >&2
    exit 2
fi

mkdir -p "$OUT"
began=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - began )) s)"; }

step "1/5 attention, fp32 and bf16"
"$PY" benchmarks/attention.py --device cuda --threads 1 --lengths 128 256 512 1024 \
    --batch 32 --d-model 512 --heads 8 --rounds 3 --min-run-time 0.5 --out "$OUT/attention.json"
"$PY" benchmarks/attention.py --device cuda --dtype bfloat16 --threads 1 \
    --lengths 128 256 512 1024 --batch 32 --d-model 512 --heads 8 --rounds 3 \
    --min-run-time 0.5 --out "$OUT/attention_bf16.json"

step "2/5 training step against nn.Transformer"
"$PY" benchmarks/train_step.py --device cuda --threads 1 --rounds 5 --min-run-time 2 \
    --d-model 512 --heads 8 --layers 6 --d-ff 2048 --batch 64 --length 64 --vocab 10000 \
    --out "$OUT/train_step.json"

step "3/5 greedy decoding, cached and recomputed"
"$PY" benchmarks/decode.py --device cuda --threads 1 --lengths 16 32 64 128 256 \
    --out "$OUT/decode.json" --plot "$OUT/decode.png"

step "4/5 peak memory of a training step"
"$PY" benchmarks/memory.py --device cuda --lengths 64 256 --d-model 512 --heads 8 --layers 6 \
    --d-ff 2048 --batch 64 --vocab 10000 --out "$OUT/memory.json"

step "5/5 Multi30k, $STEPS steps, bf16"
run_dir=$(mktemp -d)
trap 'rm -rf "$run_dir"' EXIT
t0=$(date +%s.%N)
# shellcheck disable=SC2086  # EXTRA holds several arguments on purpose
"$PY" -m scratchformer train --task multi30k --steps "$STEPS" --device cuda --precision bf16 \
    --no-progress --out "$run_dir/run" $EXTRA
t1=$(date +%s.%N)
"$PY" - "$run_dir/run" "$OUT/multi30k.json" "$t0" "$t1" "$STEPS" "$EXTRA" <<'PYTHON'
"""Collect the Multi30k run: its configuration, its metrics and the wall time."""
import datetime, json, os, sys
from pathlib import Path

import torch

run, out, t0, t1, steps, extra = sys.argv[1:]
metrics = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()
           if line.strip()]
config = json.loads((Path(run) / "config.json").read_text())
result = {
    "benchmark": "multi30k_gpu",
    "command": "python -m scratchformer train --task multi30k --steps " + steps
               + " --device cuda --precision bf16 " + extra,
    "seconds": float(t1) - float(t0), "steps": int(steps), "config": config,
    "metrics": metrics, "last": metrics[-1] if metrics else None,
    "evaluations": [m for m in metrics if any("bleu" in k for k in m)],
    "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
}
tmp = out + ".tmp"
Path(tmp).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
os.replace(tmp, out)
print(f"wrote {out}: {result['seconds']:.0f} s for {steps} steps")
PYTHON

echo
echo "gpu.sh: done in $(( $(date +%s) - began )) s; results in $OUT/"
