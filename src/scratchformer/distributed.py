"""Data-parallel training for ``scratchformer train --distributed`` under ``torchrun``: the
process group, each rank's share of the global batch, and a loss normalised by the global
label count, so that N processes take the same optimizer step as one process would."""

# Hand-written (no notebook exports here). How a step works with W processes ("ranks"):
#   1. Every rank builds the same global batch (data.BatchStream is a pure function of the
#      step) and keeps the rows rank, rank + W, rank + 2W, ... (`shard`). This is the
#      interleaving torch.utils.data.DistributedSampler uses, but applied to our batches: a
#      DistributedSampler shards an epoch's index list instead, so its batches would differ
#      from the single-process run's and resuming by step would need the sampler's state.
#      The bucketed batches are sorted by length, so the interleaving also gives every rank
#      about the same number of tokens.
#   2. The ranks add up their label counts (one all-reduce): N, the labels of the global batch.
#   3. Rank r's loss is its mean over its n_r labels times W * n_r / N. DistributedDataParallel
#      averages the gradients over the W ranks during backward, so the step's gradient is
#      sum_r (n_r / N) * grad(mean_r) = the gradient of the mean over all N labels: the
#      single-process gradient. The mean of the per-rank means would weight a label of a rank
#      with few tokens more than a label of a rank with many.
#   4. The logged loss is the global mean too: each rank sums loss * labels, one all-reduce.
# References: PyTorch's DDP notes (https://pytorch.org/docs/stable/notes/ddp.html) and the
# torchrun documentation (https://pytorch.org/docs/stable/elastic/run.html).

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedError", "TORCHRUN_VARIABLES", "Context", "single", "setup", "shutdown",
           "shard", "no_buffer_sync", "GlobalLoss", "AgreedStop"]

# The variables torchrun sets in every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCH = ("torchrun --nproc_per_node=N -m scratchformer train --distributed ...  (one machine; "
          "N processes)")


class DistributedError(RuntimeError):
    """A problem with the distributed launch, shown as one line without a traceback."""


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world`` processes and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process: the collectives below talk to the others."""
        return self.world > 1

    def sum(self, value: float | int) -> float:
        """The sum of ``value`` over all ranks (float64; the value itself on one process)."""
        if not self.distributed:
            return float(value)
        total = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return float(total.item())

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        return self.sum(1.0 if flag else 0.0) > 0

    def gather(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def from_main(self, obj):
        """Rank 0's ``obj`` on every rank (pickled)."""
        if not self.distributed:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def single(device: torch.device) -> Context:
    """The context of an ordinary single-process run."""
    return Context(device=device)


def _environment() -> dict[str, str]:
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise DistributedError(
            f"--distributed needs the environment that torchrun sets ({', '.join(missing)} "
            f"missing); start the command with torchrun, e.g. {LAUNCH}, or leave out "
            "--distributed")
    values = {name: os.environ[name] for name in TORCHRUN_VARIABLES}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        if not values[name].isdigit():
            raise DistributedError(f"{name}={values[name]!r} is not a rank number; start the "
                                   f"command with torchrun, e.g. {LAUNCH}")
    return values


def setup(device: str) -> Context:
    """Join the process group that torchrun described in the environment. ``device``: "auto"
    (CUDA when available), "cpu" or "cuda": each process takes ``cuda:LOCAL_RANK`` and NCCL;
    on the CPU the backend is gloo. DistributedError (one line) when it cannot."""
    values = _environment()
    rank, world = int(values["RANK"]), int(values["WORLD_SIZE"])
    local_rank = int(values["LOCAL_RANK"])
    if device not in ("auto", "cpu", "cuda"):
        raise DistributedError(f"--device {device}: with --distributed every process takes "
                               "cuda:LOCAL_RANK; give --device cuda, cpu or auto")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise DistributedError("--device cuda: CUDA is not available here; use --device "
                                   "cpu (gloo) or --device auto")
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible: give torchrun --nproc_per_node at most that number")
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    else:
        target = torch.device("cpu")
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        try:
            dist.init_process_group(backend)
        except (RuntimeError, ValueError) as error:
            text = " ".join(str(error).split())[:300]
            raise DistributedError(f"cannot join the {backend} process group of "
                                   f"{values['MASTER_ADDR']}:{values['MASTER_PORT']} "
                                   f"({text})") from None
    return Context(rank, world, local_rank, target)


def shutdown() -> None:
    """Leave the process group (safe to call when none was joined, also after an error)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(src: torch.Tensor, tgt: torch.Tensor, rank: int, world: int, pad_id: int = 0, *,
          trim: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rank ``rank``'s rows ``rank::world`` of a global batch ``src (B, S), tgt (B, T)``:
    ``(src (b, S), tgt (b, T))``, b = ceil((B - rank) / world); None when b = 0 (a last batch
    smaller than ``world``). ``trim``: drop the columns that are padding in every kept row
    (less work for a rank whose rows are all short).
    """
    src, tgt = src[rank::world], tgt[rank::world]
    if src.shape[0] == 0:
        return None
    if trim:
        s = int((src != pad_id).sum(1).max())
        t = int((tgt != pad_id).sum(1).max())
        src, tgt = src[:, :max(s, 1)], tgt[:, :max(t, 2)]
    return src, tgt


def no_buffer_sync() -> dict[str, bool]:
    """The DistributedDataParallel argument that stops it from copying rank 0's buffers to the
    other ranks before every forward: ``forward_sync_buffers=False`` where this torch has it,
    else ``broadcast_buffers=False`` (the older name).

    Our models' only buffer is the sinusoidal table, a cache that grows with the longest
    sequence a rank has seen. Rank 0 alone decodes the validation set, so the ranks' tables
    differ in length and the copy fails (gloo: "Received data size doesn't match expected
    size"); no buffer needs syncing, and the tables are equal (empty) when DDP starts.
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class GlobalLoss:
    """The micro-batches of one rank and a ``loss_fn`` for ``training.train_step`` that
    normalises by the label count of the **global** batch (see the notes at the top).

    ``batches(global_micro_batches)`` returns this rank's micro-batches and records, for each,
    its weight W * T_local / N (T_local: the labels of this rank's micro-batches, which
    train_step divides by; N: the labels of the global step). A rank whose share is empty still
    runs one forward and backward (on a borrowed row, weight 0), because DDP's gradient
    all-reduce needs every rank. ``record(r)`` turns fit's record into the global one.
    """

    def __init__(self, ctx: Context, base_loss: Callable, pad_id: int = 0):
        self.ctx, self.base_loss, self.pad_id = ctx, base_loss, pad_id
        self._weights: list[float] = []
        self._real: list[bool] = []
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        self._labels = 0                 # global labels since the last record

    def batches(self, global_micro_batches: list) -> list:
        from scratchformer.training import label_count
        ctx, mine, real = self.ctx, [], []
        for src, tgt in global_micro_batches:
            part = shard(src, tgt, ctx.rank, ctx.world, self.pad_id, trim=True)
            real.append(part is not None)
            mine.append(part if part is not None else (src[:1], tgt[:1]))
        counts = [label_count(tgt, self.pad_id) for _, tgt in mine]
        local = sum(n for n, ok in zip(counts, real) if ok)
        total = int(ctx.sum(local))      # N, the same on every rank
        seen = max(sum(counts), 1)       # what train_step divides by
        self._weights = [ctx.world * seen / max(total, 1) if ok else 0.0 for ok in real]
        self._real, self._counts = real, counts
        self._labels += total
        return mine

    def __call__(self, model, src, tgt, *, epsilon, precision):
        """``base_loss`` scaled for the gradient; its value stays the micro-batch's own mean
        (what the progress bar shows), and its label-weighted sum is kept for ``record``."""
        weight, real = self._weights.pop(0), self._real.pop(0)
        n = self._counts.pop(0)
        mean = self.base_loss(model, src, tgt, epsilon=epsilon, precision=precision)
        if real:
            self._loss_sum += mean.detach().double() * n
        scaled = mean * weight
        # value: the mean (or 0 for a borrowed row); gradient: that of `scaled`
        return scaled + (mean.detach() * float(real) - scaled.detach())

    def record(self, record: dict) -> dict:
        """fit's record with the global loss (label-weighted mean over all ranks since the last
        record), label count and throughput. A collective: every rank must call it."""
        total = self.ctx.sum(float(self._loss_sum))
        labels, self._labels = self._labels, 0
        self._loss_sum.zero_()
        seconds = record["tokens"] / record["tokens_per_s"] if record.get("tokens_per_s") \
            else 0.0
        return {**record, "loss": total / max(labels, 1), "tokens": labels,
                "tokens_per_s": labels / seconds if seconds > 0 else 0.0}


class AgreedStop:
    """A ``stop()`` for fit that is true on every rank as soon as one rank's ``local()`` is
    (Ctrl-C reaches the ranks at different moments; stopping at different steps would leave
    one rank waiting forever for the others' gradients). One all-reduce per step."""

    def __init__(self, ctx: Context, local: Callable[[], bool]):
        self.ctx, self.local, self.requested = ctx, local, False

    def __call__(self) -> bool:
        self.requested = self.requested or self.ctx.any(self.local())
        return self.requested
