"""Data-parallel training under torchrun (CPU, gloo, 2 processes): the same losses as one
process on the same global batches, identical parameters on every rank, rank 0 alone writing
and printing, resume, and the pieces of scratchformer.distributed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_testing import main, scratchformer
from scratchformer import distributed, runs, training

# The project's Multi30k sample (subwords, BLEU on validation), odd batches (7 rows: 4 on
# rank 0, 3 on rank 1) of sentences of different lengths, so the ranks hold different numbers
# of labels in every step; no dropout, so both runs draw nothing. Rank 0 alone decodes the
# validation set at step 2 and 4 (longer sequences than the training batches).
TINY = ["--task", "multi30k", "--sample", "--d-model", "16", "--heads", "2", "--layers", "1",
        "--d-ff", "32", "--batch-size", "7", "--dropout", "0", "--log-every", "1",
        "--eval-every", "2", "--no-progress", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TORCHRUN = Path(sys.executable).with_name("torchrun")
# Summing over 2 ranks and averaging gradients changes the order of float32 additions: the
# losses agree to about 1e-7 relative (measured), and we allow 1e-5.
RTOL = 1e-5


def torchrun(*args, log_dir: Path) -> subprocess.CompletedProcess:
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "--log-dir", str(log_dir),
               "--redirects", "3", "-m", "scratchformer", "train", *map(str, args),
               "--distributed"]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=180)


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"every step once: {steps}"      # one writer
    return {r["step"]: r["loss"] for r in records}


def rank_logs(log_dir: Path, rank: int, stream: str) -> str:
    files = sorted(log_dir.rglob(f"attempt_*/{rank}/{stream}.log"))
    assert files, f"no {stream}.log of rank {rank} under {log_dir}"
    return "".join(f.read_text() for f in files)


@pytest.fixture(scope="module")
def runs_made(tmp_path_factory) -> dict[str, Path]:
    """One process, 5 steps; two processes, 3 steps, then resumed to 5."""
    root = tmp_path_factory.mktemp("ddp")
    data = ["--data-dir", root / "data"]
    assert main("train", *TINY, *data, "--steps", 5, "--out", root / "single") == 0
    first = torchrun(*TINY, *data, "--steps", 3, "--out", root / "ddp", log_dir=root / "logs1")
    assert first.returncode == 0, first.stderr[-3000:]
    # resumed with each rank's rows in 2 micro-batches: still the same steps
    second = torchrun("--resume", root / "ddp", "--steps", 5, "--accumulate", 2,
                      "--no-progress", "--device", "cpu", log_dir=root / "logs2")
    assert second.returncode == 0, second.stderr[-3000:]
    return {"root": root, "single": root / "single", "ddp": root / "ddp"}


def test_two_processes_log_the_single_process_losses_also_after_resume(runs_made):
    single, ddp = losses(runs_made["single"]), losses(runs_made["ddp"])
    assert list(ddp) == [1, 2, 3, 4, 5]
    for step, loss in single.items():
        assert ddp[step] == pytest.approx(loss, rel=RTOL), step


def test_two_processes_end_with_the_single_process_weights(runs_made):
    from safetensors.torch import load_file
    a = load_file(runs_made["single"] / "model.safetensors")
    b = load_file(runs_made["ddp"] / "model.safetensors")
    assert a.keys() == b.keys()
    # Adam divides by sqrt(v): where a gradient is ~0, rounding noise can flip the sign of
    # an update of size ~lr. So the weights agree to 2 * (sum of the learning rates).
    records = (runs_made["single"] / "metrics.jsonl").read_text().splitlines()
    atol = 2 * sum(json.loads(line)["lr"] for line in records)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=atol)
    moved = sum(float((a[n] - b[n]).abs().max() > atol / 100) for n in a)
    assert moved < len(a) / 2              # most tensors agree far more closely


def test_rank_0_alone_prints_and_writes(runs_made):
    ddp, root = runs_made["ddp"], runs_made["root"]
    assert sorted(p.name for p in ddp.iterdir()) == sorted(
        ["config.json", "vocab.json", "model.safetensors", "state.pt", "metrics.jsonl",
         "curves.png"])
    for logs in ("logs1", "logs2"):
        out0 = rank_logs(root / logs, 0, "stdout")
        assert "2 processes" in out0 and out0.count("done: ") == 1
        assert rank_logs(root / logs, 1, "stdout") == ""
        assert rank_logs(root / logs, 1, "stderr").strip() == ""
    config = json.loads((ddp / "config.json").read_text())
    assert config["processes"] == 2
    state = runs.load_state(ddp / "state.pt")
    assert state["step"] == 5 and len(state["rng_ranks"]) == 2
    first, second = (ranks["torch"] for ranks in state["rng_ranks"])
    assert not torch.equal(first, second)                  # each rank its own dropout masks


def test_python_dash_m_runs_the_command():
    done = subprocess.run([sys.executable, "-m", "scratchformer", "train", "--help"], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--distributed" in done.stdout


def test_distributed_without_torchrun_names_torchrun(tmp_path, capsys, monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    code, out, err = scratchformer(capsys, "train", "--task", "copy", "--steps", 1,
                                   "--distributed", "--out", tmp_path / "r")
    assert code == 2 and out == ""
    assert "torchrun --nproc_per_node=N -m scratchformer train --distributed" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


# --- the pieces, in two processes started here ------------------------------------------------

def test_shard_interleaves_rows_and_trims_padding_columns_on_request():
    src = torch.tensor([[5, 6, 2, 0], [5, 2, 0, 0], [7, 7, 7, 2], [4, 2, 0, 0], [6, 2, 0, 0]])
    tgt = torch.tensor([[1, 5, 2, 0], [1, 2, 0, 0], [1, 7, 7, 2], [1, 4, 2, 0], [1, 2, 0, 0]])
    s1, t1 = distributed.shard(src, tgt, 1, 2, trim=True)
    assert s1.tolist() == [[5, 2], [4, 2]] and t1.tolist() == [[1, 2, 0], [1, 4, 2]]
    s1, t1 = distributed.shard(src, tgt, 1, 2)                 # the global width
    assert s1.tolist() == [[5, 2, 0, 0], [4, 2, 0, 0]] and t1.shape == (2, 4)
    s0, _ = distributed.shard(src, tgt, 0, 2)
    assert s0.tolist() == [[5, 6, 2, 0], [7, 7, 7, 2], [6, 2, 0, 0]]
    assert distributed.shard(src[:1], tgt[:1], 1, 2) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model():
    torch.manual_seed(0)
    model = runs.build_model({"src_vocab_size": 12, "tgt_vocab_size": 12, "d_model": 16,
                              "n_heads": 2, "n_encoder_layers": 1, "n_decoder_layers": 1,
                              "d_ff": 32, "dropout": 0.0})
    return model


def _batch():
    """Two micro-batches. The first has rows of very different lengths: rank 0 gets the long
    ones (many labels), rank 1 the short ones, so the mean of the two ranks' means differs
    from the mean over all labels. The second has one row: rank 1 has no share of it and
    runs a borrowed row with weight 0."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(7):
        n = 12 if i % 2 == 0 else 2
        body = torch.randint(4, 12, (n,), generator=g)
        rows.append((torch.cat([body, torch.tensor([2])]),
                     torch.cat([torch.tensor([1]), body, torch.tensor([2])])))

    def pad(part):
        return (torch.nn.utils.rnn.pad_sequence([s for s, _ in part], batch_first=True),
                torch.nn.utils.rnn.pad_sequence([t for _, t in part], batch_first=True))
    return [pad(rows[:6]), pad(rows[6:])]


def _worker(rank: int, port: int, out: str, naive: bool) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = distributed.setup("cpu")
    try:
        from torch.nn.parallel import DistributedDataParallel
        model = _model()
        ddp = DistributedDataParallel(model, **distributed.no_buffer_sync())   # as runs
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        loss = distributed.GlobalLoss(ctx, training.micro_batch_loss)
        results = []
        for _ in range(3):
            mine = loss.batches(_batch())
            if naive:                     # the mean of the per-rank means
                out_ = training.train_step(ddp, mine, optimizer, epsilon=0.0)
                value = ctx.sum(out_["loss"]) / 2
            else:
                out_ = training.train_step(ddp, mine, optimizer, epsilon=0.0, loss_fn=loss)
                value = loss.record({"tokens": 1, "tokens_per_s": 1.0})["loss"]
            results.append(value)
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = ctx.gather(flat)
        if ctx.main:
            torch.save({"losses": results, "params": gathered}, out)
    finally:
        distributed.shutdown()


def _spawn(tmp_path: Path, naive: bool) -> dict:
    import torch.multiprocessing as mp
    out = tmp_path / f"out-{naive}.pt"
    mp.spawn(_worker, args=(_free_port(), str(out), naive), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


def _single_process() -> tuple[list[float], torch.Tensor]:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses_ = [training.train_step(model, _batch(), optimizer, epsilon=0.0)["loss"]
               for _ in range(3)]
    return losses_, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_global_label_count_gives_the_single_process_step_and_ranks_agree(tmp_path):
    reference, params = _single_process()
    good = _spawn(tmp_path, naive=False)
    assert good["losses"] == pytest.approx(reference, rel=RTOL)
    rank0, rank1 = good["params"]
    assert torch.equal(rank0, rank1)                  # DDP keeps the replicas identical
    torch.testing.assert_close(rank0, params, rtol=1e-4, atol=1e-6)
    # The test can fail: the mean of the per-rank means is a different loss and step.
    naive = _spawn(tmp_path, naive=True)
    assert abs(naive["losses"][0] - reference[0]) > 100 * RTOL * reference[0]
    assert not torch.allclose(naive["params"][0], params, rtol=1e-4, atol=1e-6)
