"""Training on several processes with PyTorch's DistributedDataParallel, launched by torchrun.

`torchrun --nproc-per-node N -m cnnlab train ...` (several machines: torchrun's rendezvous)
starts N copies of `cnnlab train` and tells each its place in RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT. `run_job` joins them into one process group for the command
(NCCL for CUDA tensors, Gloo for CPU tensors) and leaves it afterwards. Without those variables,
or with WORLD_SIZE=1, it only runs the command: no process group, and every `Ranks` method
below returns at once, so a single process trains exactly as it always did. The trainer asks
`current_ranks()` where it stands and does everything that involves other ranks through `Ranks`.

How the processes share the work, and what stays the same as in one process:

- Batches. `--batch-size` is the global batch; a size not divisible by the number of processes
  W is refused. Every rank draws the same seeded permutation of each epoch and takes its
  contiguous part of every global batch (`InMemoryLoader(shard=...)`), so together the ranks
  see exactly the batches one process would, and checkpoints count positions in global
  batches. An epoch's last batch may split unevenly (parts differ by one image): each rank's
  loss is then weighted by its share, so that the average of the ranks' gradients is still the
  whole batch's. A last batch with fewer images than ranks is refused (a rank without images
  cannot take part in a step).
- Weights. DDP averages the gradients, so a model without BatchNorm, augmentation or dropout
  trains to the weights one process reaches on the same global batch, up to float rounding.
  A loss weighted by class (`--class-weights`) is normalised by each part's weight sum, so it
  differs slightly from the whole batch's.
- BatchNorm. Without `--sync-bn` each rank normalises with the statistics of its own part of
  the batch, and the running statistics are rank 0's: DDP broadcasts them before every forward
  pass, and `broadcast_buffers` again before each evaluation. With `--sync-bn` the statistics
  are those of the global batch: `nn.SyncBatchNorm` on GPUs, and on CPUs (where PyTorch's runs
  only on GPUs) our own, one all-reduce per layer and pass (sync_batchnorm.py). Precise BatchNorm
  statistics are computed from whole global batches on every rank (with `--sync-bn`, from the
  parts, synchronised): the same as one process's.
- Randomness. Rank 0 draws augmentation and dropout from the streams a single process uses;
  rank r > 0 from streams seeded by (seed, r), so augmented runs depend on W. A checkpoint
  written mid-epoch keeps rank 0's augmentation stream; the other ranks restart theirs, so a
  resumed multi-process run is not bit-exact (a single process with --deterministic is).
- Metrics. The epoch's loss and accuracy sums are summed over the ranks at the end of each
  epoch (the progress bar shows rank 0's part). Evaluation splits the dataset over the ranks and
  sums loss, correct count and confusion matrix: one process's result, the loss up to rounding.
- Files and output. Only rank 0 writes the run folder (its path, timestamped by rank 0, is
  broadcast), TensorBoard logs included, and prints; the others' stdout and stderr go to
  os.devnull. The first process on each machine loads the dataset (downloading it if need be)
  before the others. Checkpoints hold the
  unwrapped model, so a run resumes under any number of processes whose global batch is the
  same, one included. Resuming reads the checkpoint on every rank: the run folder must be at the
  same path on every machine (a shared filesystem).
- Agreement. Each training step ends in one small all-reduce in which the ranks share whether
  their loss and gradients were finite and any stop signal (about 0.5 ms with Gloo on a 2-core
  machine), and each epoch in another: all apply, skip or stop the same step. torchrun forwards
  SIGINT and SIGTERM to every rank; rank 0 writes checkpoints/last and every rank exits with 130
  or 143 (torchrun itself then exits with 1, after a traceback of its own).
- Fast path. Rank 0 times the precision and memory-format candidates; every rank takes its
  choice.
- Errors. Every rank checks the same settings, reads the same data and checkpoints and agrees
  on the steps, so rank 0's one line says what went wrong; the others exit with the same code
  in silence. Running out of memory can be one rank's own: that rank names itself in its line.
  A rank that loses contact with the others (one of them failed) says so on rank 0 only.
- Threads. torchrun sets OMP_NUM_THREADS=1 for each process unless it is already set;
  `--threads` sets each process's own.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnnlab.errors import CnnlabError, OutOfMemory
from cnnlab.train.sync_batchnorm import synchronised_norms

DROPOUT_STREAM = 5  # seeds torch's generator on ranks > 0 (data.splits numbers streams 1-4)
LOST_PEER = "Connection closed by peer"  # Gloo's words when another rank died
GLOO_SETTLE_S = 0.1  # see _leave


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank, world size, rank on its machine, device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world size): which part of every global batch this rank takes."""
        return self.rank, self.world_size

    def check_batches(self, batch_size: int, images: int) -> None:
        """Refuse a global batch that does not give every rank an equal part, and an epoch whose
        last batch leaves a rank without images."""
        ranks, last = self.world_size, images % batch_size
        if batch_size % ranks:
            fitting = max(ranks, batch_size // ranks * ranks)
            raise CnnlabError(
                f"--batch-size {batch_size} is the global batch, shared by the {ranks} processes "
                f"of this torchrun job: it must be divisible by {ranks} (e.g. {fitting})"
            )
        if 0 < last < ranks:
            raise CnnlabError(
                f"the last batch of each epoch ({images} training images, batch {batch_size}) "
                f"holds {last} images, fewer than the {ranks} processes of this torchrun job, "
                f"which each need at least one: choose another --batch-size"
            )

    def parallel(self, model: nn.Module, sync_bn: bool) -> tuple[nn.Module, nn.Module]:
        """The model (its BatchNorm layers synchronised with `sync_bn`) and what a training
        step calls: its DistributedDataParallel wrapper, or the model itself alone."""
        if not self.distributed:
            return model, model
        if sync_bn:
            model = synchronised_norms(model, self.device)
        devices = [self.device] if self.device.type == "cuda" else None
        return model, DistributedDataParallel(model, device_ids=devices)

    # ---- collectives: each returns at once in a single process ---------------------------

    def agree(self, problem: str | None, signal: int | None) -> tuple[str | None, int | None]:
        """This rank's verdict on its step (None, "loss" or "gradients") and stop signal (None
        or its number), made every rank's in one all-reduce: a problem anywhere is everyone's,
        and so is the highest signal number."""
        if not self.distributed:
            return problem, signal
        flags = torch.tensor(
            [problem == "loss", problem == "gradients", signal or 0], device=self.device
        )
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        loss, gradients, signal = flags.tolist()
        return ("loss" if loss else "gradients" if gradients else None), (signal or None)

    def everywhere(self, flag: bool) -> bool:
        """Whether `flag` holds on every rank."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def total(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks, in place; in one process, `tensor` itself."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics), which rank 0 saves."""
        if self.distributed:
            _broadcast(list(model.buffers()))

    def broadcast_state(self, *models: nn.Module) -> None:
        """Give every rank rank 0's weights and buffers of `models`."""
        if self.distributed:
            _broadcast([tensor for model in models for tensor in model.state_dict().values()])

    def from_main(self, work):
        """`work()` done by rank 0 alone; its result, or its CnnlabError, every rank's."""
        if not self.distributed:
            return work()
        outcome = [None, None]
        if self.is_main:
            try:
                outcome = [work(), None]
            except CnnlabError as error:
                outcome = [None, str(error)]
        dist.broadcast_object_list(outcome, src=0, device=self.device)
        result, failure = outcome
        if failure is not None:
            raise CnnlabError(failure)
        return result

    def main_first(self, work):
        """`work()` on the first rank of each machine, then on the others: the first downloads
        what is missing, the others find it there."""
        if not self.distributed:
            return work()
        first = self.local_rank == 0
        try:
            result = work() if first else None
        finally:  # a barrier on the training device, also when the first one failed
            self.everywhere(True)
        return result if first else work()

    def reseed(self, seed: int, epoch: int, batch: int) -> None:
        """On ranks > 0, seed torch's generator (dropout) from (seed, rank, position in the
        run); rank 0 keeps the stream of a single process, restored on resume."""
        if self.rank:
            key = (DROPOUT_STREAM, self.rank, epoch, batch)
            state = np.random.SeedSequence(seed, spawn_key=key).generate_state(1, np.uint64)
            torch.manual_seed(int(state[0]))


def _broadcast(tensors: list[torch.Tensor]) -> None:
    """Rank 0's values of `tensors`, copied into them on every rank: one broadcast per dtype."""
    for dtype in dict.fromkeys(tensor.dtype for tensor in tensors):  # in the same order on all
        group = [tensor for tensor in tensors if tensor.dtype == dtype]
        flat = torch.cat([tensor.detach().reshape(-1) for tensor in group])
        dist.broadcast(flat, src=0)
        with torch.no_grad():
            for tensor, value in zip(group, flat.split([t.numel() for t in group]), strict=True):
                tensor.copy_(value.view_as(tensor))


# ---- joining and leaving the job -----------------------------------------------------------


def launched_ranks(environ=None) -> Ranks | None:
    """This process's place according to torchrun's environment variables, or None when it was
    not started as one of several processes."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    rank, world_size = _whole(environ, "RANK"), _whole(environ, "WORLD_SIZE")
    if not 0 <= rank < world_size:
        raise CnnlabError(
            f"torchrun's environment gives RANK={rank} and WORLD_SIZE={world_size}: expected "
            f"0 <= RANK < WORLD_SIZE"
        )
    if world_size == 1:
        return None
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
    if missing:
        raise CnnlabError(
            f"RANK and WORLD_SIZE are set but {' and '.join(missing)} not: start cnnlab with "
            f"torchrun, which sets them all"
        )
    return Ranks(rank, world_size, _whole(environ, "LOCAL_RANK", "0"))


def _whole(environ, name: str, default: str | None = None) -> int:
    value = environ.get(name, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CnnlabError(
            f"torchrun's environment: {name}={value!r} is not a whole number"
        ) from None


def current_ranks(device: torch.device | None = None) -> Ranks:
    """Where this process stands in the process group it belongs to (a single process when it
    belongs to none); with `device`, the device it trains on: on CUDA, its machine's GPU number
    LOCAL_RANK."""
    device = torch.device("cpu") if device is None else device
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return Ranks(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise CnnlabError(
                f"this machine runs process LOCAL_RANK={local_rank} of the torchrun job on CUDA, "
                f"but PyTorch sees {torch.cuda.device_count()} GPU(s) here: start at most that "
                f"many processes per machine (--nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, device)


def run_job(work):
    """`work()` as this process's part of a torchrun job (see the module's docstring for who
    prints what), or just `work()` outside one."""
    ranks = launched_ranks()
    if ranks is None:
        return work()
    try:
        _join(ranks)
        result = work() if ranks.is_main else _silently(work)
    except (CnnlabError, RuntimeError) as error:
        reported = _as_reported(error, ranks)
        reported.__traceback__ = reported.__context__ = None  # nothing holding the trainer
    else:
        _leave(finished=True)
        return result
    _leave(finished=False)  # here, the failed work's frames (its trainer) are gone
    raise reported from None


def _silently(work):
    with (
        open(os.devnull, "w") as silent,
        contextlib.redirect_stdout(silent),
        contextlib.redirect_stderr(silent),
    ):
        return work()


def _leave(finished: bool) -> None:
    """Leave the process group without aborting at exit. A Gloo worker thread frees each
    collective's tensors itself after the collective returns, which takes the GIL; a thread that
    asks for the GIL once the interpreter is shutting down ends the process with SIGABRT
    ("terminate called without an active exception", 1 run in 5 on the 2-core machine). So the
    trainer (its DDP wrapper) goes first, a finished job's ranks meet in a last collective (none
    closes its connections while another still reads from them), and the workers get a moment
    with the GIL before the process goes on to exit."""
    if not dist.is_initialized():
        return
    gc.collect()  # the trainer's reference cycles hold the DDP wrapper
    if finished:
        dist.all_reduce(torch.zeros(1))
    dist.destroy_process_group()
    time.sleep(GLOO_SETTLE_S)


def refuse_torchrun(command: str) -> None:
    """Commands other than `train` would run once per process, each writing the same files."""
    ranks = launched_ranks()
    if ranks is not None:
        raise CnnlabError(
            f"cnnlab {command} does not run under torchrun (its {ranks.world_size} processes "
            f"would each run it whole): start it as one process; `cnnlab train` trains under "
            f"torchrun"
        )


def _join(ranks: Ranks) -> None:
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        backend = "cpu:gloo,cuda:nccl"  # chosen per collective by the tensors' device
    try:
        dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world_size)
    except (RuntimeError, ValueError) as error:  # torch's DistError is a RuntimeError
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        raise CnnlabError(
            f"cannot join the torchrun job at {where} as rank {ranks.rank} of "
            f"{ranks.world_size}: {str(error).splitlines()[0]}"
        ) from None


def _as_reported(error: Exception, ranks: Ranks) -> BaseException:
    """What the CLI gets from `run_job`: on rank 0 the error (lost contact as one line); on
    other ranks an exit in silence, but for running out of memory, which may be theirs alone."""
    lost = isinstance(error, dist.DistError) or LOST_PEER in str(error)
    if not isinstance(error, CnnlabError) and not lost:
        raise error  # a bug: its traceback
    if ranks.is_main and lost:
        return CnnlabError(
            f"lost contact with the other processes of the torchrun job ("
            f"{str(error).splitlines()[0]}): one of them failed or was stopped; torchrun's "
            f"summary names it"
        )
    if ranks.is_main:
        return error
    if isinstance(error, OutOfMemory):
        return OutOfMemory(f"process rank {ranks.rank} of {ranks.world_size}: {error}")
    return SystemExit(getattr(error, "exit_code", 2))
