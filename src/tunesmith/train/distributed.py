"""Data-parallel training on N processes: the launcher (torchrun) and what each rank of the loop needs.

``train.nproc: N`` (``--nproc N``) makes the train stage start ``python -m torch.distributed.run
--standalone --nproc_per_node N -m tunesmith.ddp RUN_DIR`` (gloo on CPU, NCCL on CUDA; accelerate sets up
the process group). Every rank loads the same model and the same batch plan; each micro-batch is split by
rank (``idx[rank::N]``), every rank's gradients are summed (one all-reduce per step) so each optimizer
step equals the single-process step on the whole batch, and only rank 0 writes metrics, checkpoints,
``train.json`` and the model. The parent process waits, then evaluates and exports as usual.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..errors import TunesmithError

RANK_LOG = "train-ranks.log"      # the ranks' combined output, in the run folder
RANK_ERROR = ".rank-error"        # a rank's one-line error (bad input found inside a rank), read by the launcher


@dataclass(frozen=True)
class Ranks:
    """This process's place in the training group (rank 0 of 1 without torch.distributed)."""
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def current() -> Ranks:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    if in_rank_process():          # started by the launcher, before the loop sets up the group
        return Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    return Ranks()


def in_rank_process() -> bool:
    """Whether this process was started by the launcher as one rank of a group (torchrun's environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def shard(idx: list[int], ranks: Ranks) -> list[int]:
    """This rank's part of a micro-batch (empty when the batch has fewer items than ranks)."""
    return idx[ranks.rank::ranks.world] if ranks.distributed else idx


def sum_across(values: list[float], ranks: Ranks, device) -> list[float]:
    """``values`` summed over the ranks (one all-reduce)."""
    if not ranks.distributed:
        return list(values)
    import torch
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def reduce_gradients(params: list, ranks: Ranks) -> None:
    """Sum every trainable parameter's gradient over the ranks, in one flat all-reduce (a rank whose shard was
    empty contributes zeros)."""
    if not ranks.distributed:
        return
    import torch
    import torch.distributed as dist
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1).float() for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def peak_rss_mb(ranks: Ranks, device) -> float | None:
    """The largest peak resident memory of any rank's process, in MiB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:          # not a POSIX system
        return None
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    if not ranks.distributed:
        return round(own, 1)
    import torch
    import torch.distributed as dist
    t = torch.tensor([own], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return round(float(t), 1)


def broadcast_parameters(params: list, ranks: Ranks) -> None:
    """Rank 0's values of ``params`` on every rank (the start must be the same everywhere)."""
    if not ranks.distributed:
        return
    import torch.distributed as dist
    for p in params:
        dist.broadcast(p.data, src=0)


class Replicated:
    """The loop's data-parallel strategy with a whole copy of the model on every rank (also the single-process
    case, where every collective is a no-op). A strategy prepares the model (``wrap``) and the objective
    (``through``: how the loop calls it), scales the backward pass (``backward_scale``), says whether a rank
    with no items in a micro-batch must still run it (``every_rank_steps``), turns gradient syncing on for the
    step's last micro-batch (``sync``), finishes the gradients (``reduce_gradients``), gives and takes whole
    trainable weights and optimizer state for checkpoints (``trainable_state``: what rank 0 saves; ``load_*``:
    every rank loads the whole checkpoint) and measures the ranks' disagreement (``spread``)."""
    name = "ddp"
    every_rank_steps = False
    backward_scale = 1.0          # the loss as computed (each rank's share of the whole batch's mean)

    def __init__(self, ranks: Ranks, device):
        self.ranks, self.device = ranks, device

    def wrap(self, model):
        model = model.to(self.device)
        broadcast_parameters([p for p in model.parameters() if p.requires_grad], self.ranks)
        return model

    def through(self, objective):
        """``objective`` as the loop calls it (here: itself)."""
        return objective

    def sync(self, model, on: bool) -> None:
        """Nothing to switch: gradients are summed once per step by :meth:`reduce_gradients`."""

    def reduce_gradients(self, params) -> None:
        reduce_gradients(params, self.ranks)

    def trainable_state(self, model) -> dict:
        from ..methods.base import trainable_state
        return trainable_state(model) if self.ranks.main else {}

    def load_trainable(self, model, weights: dict) -> None:
        from ..methods.base import load_trainable_state
        load_trainable_state(model, weights)

    def optimizer_state(self, model, optimizer) -> dict:
        return optimizer.state_dict() if self.ranks.main else {}

    def load_optimizer(self, model, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def spread(self, params) -> float | None:
        return disagreement(params, self.ranks, self.device)


def backend(device) -> str | None:
    """The process group's backend for ``device`` (gloo, nccl), None outside a group."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return None
    pairs = dict(part.split(":", 1) for part in dist.get_backend_config().split(",") if ":" in part)
    return pairs.get(getattr(device, "type", str(device)), dist.get_backend())


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        import torch.distributed as dist
        dist.barrier()


def disagreement(params: list, ranks: Ranks, device) -> float:
    """The largest difference across ranks of the trainable weights' checksums (sum and sum of squares); 0.0 when
    every rank holds the same weights, as it must."""
    if not ranks.distributed:
        return 0.0
    import torch
    import torch.distributed as dist
    local = torch.tensor([sum(float(p.detach().double().sum()) for p in params),
                          sum(float(p.detach().double().pow(2).sum()) for p in params)],
                         dtype=torch.float64, device=device)
    hi, lo = local.clone(), local.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).abs().max())


def check_settings(cfg, callbacks: bool, continuing=None) -> None:
    """What N-process training (``cfg``: the recipe's train section, ``continuing``: its continue section) does
    not combine with, as one-line errors before anything starts."""
    if cfg.nproc <= 1:
        if cfg.strategy == "fsdp":
            raise TunesmithError("train.strategy fsdp shards the model across processes: set train.nproc to 2 or "
                                 "more", field="train.strategy")
        return
    if cfg.time_budget is not None:
        raise TunesmithError("train.time_budget plans steps from one process's timing; it does not combine with "
                             "train.nproc > 1 in this version", field="train.nproc")
    if callbacks:
        raise TunesmithError("train.nproc > 1 trains in child processes; per-step callbacks (jobs, sweeps) need "
                             "train.nproc: 1", field="train.nproc")
    if cfg.device in ("mps",):
        raise TunesmithError("train.nproc > 1 runs on CPU (gloo) or CUDA (NCCL), not mps", field="train.nproc")
    if cfg.strategy == "fsdp" and getattr(continuing, "strategy", None) == "regularize":
        raise TunesmithError("continue.strategy regularize measures whole weights every step; it does not combine "
                             "with train.strategy fsdp in this version", field="train.strategy")


def launch(run_dir: Path, nproc: int, *, resume: bool, threads: int | None) -> None:
    """Train ``run_dir`` on ``nproc`` processes and wait; the ranks' output goes to the terminal and to
    ``train-ranks.log`` in the run folder. A failed rank is one error naming that log and its last line."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tunesmith.ddp", str(run_dir), *(["--resume"] if resume else [])]
    env = dict(os.environ)
    cores = os.cpu_count() or 1
    env["OMP_NUM_THREADS"] = str(threads or max(1, cores // nproc))
    env["PYTHONUNBUFFERED"] = "1"
    log_path = Path(run_dir) / RANK_LOG
    tail: deque[str] = deque(maxlen=20)
    with open(log_path, "a", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, start_new_session=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stderr.write(line)
                log.write(line)
                tail.append(line.rstrip())
            code = proc.wait()
        except BaseException:        # interrupted: stop the whole group, not just the launcher
            _stop(proc)
            raise
    if code != 0:
        error_file = Path(run_dir) / RANK_ERROR
        said = error_file.read_text(encoding="utf-8").strip() if error_file.is_file() else ""
        error_file.unlink(missing_ok=True)
        raise TunesmithError(f"training on {nproc} processes failed (exit {code}): "
                             f"{said or (tail[-1] if tail else 'see the log')}", file=str(log_path))


def _stop(proc: subprocess.Popen) -> None:
    import signal
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


__all__ = ["Ranks", "Replicated", "current", "in_rank_process", "shard", "sum_across", "reduce_gradients", "broadcast_parameters",
           "backend", "barrier", "disagreement", "peak_rss_mb", "check_settings", "launch", "RANK_LOG", "RANK_ERROR"]
