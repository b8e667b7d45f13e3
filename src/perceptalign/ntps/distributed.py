"""Data-parallel NTPS statistics: several processes share the batches and all-reduce their sums.

Why this is cheap to get right: the moments of docs/ntps.md, "Definitions" are float64 SUMS with integer
counts, so the
statistics of the whole dataset are the element-wise sum of the statistics of any partition of it. Each
process streams its own share of the (deterministic, length-sorted) batches through its own copy of the
model, and one SUM all-reduce per tensor at the end gives every process the statistics of the whole data.

Launch: ``torchrun --nproc_per_node K -m perceptalign ntps score …`` (or ``accelerate launch``, which runs
torchrun) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`init_distributed` reads
them and joins the process group (gloo for CPU tensors, NCCL for CUDA tensors) unless one exists already.
With a CUDA device each rank runs on ``cuda:LOCAL_RANK`` (:func:`rank_device`), so that K processes on
one node use K GPUs and the sums are all-reduced where they are, by NCCL.

Sharding: batch ``i`` of the length-sorted list goes to rank ``i mod K`` (round-robin). The batches are
sorted longest first and most hold close to ``token_budget`` padded tokens, so neighbouring batches cost
about the same and every rank gets a near-equal share of the tokens and of the long (expensive) texts;
a contiguous split would hand all long texts to rank 0. For non-increasing batch costs round-robin
guarantees load(r) − load(s) ∈ [0, cost of the first batch] for r < s. Measured on 10,000 log-normal
lengths (median 27 tokens, budget 4096, 90 batches): the largest/smallest rank's real-token load is
1.003 at K = 2, 1.010 at K = 4, 1.032 at K = 8.

Memory: the sums are reduced tensor by tensor, in place (a 4096-d model holds ~13 GB of float64 sums over
33 layers; concatenating them into one buffer would double that).

Checkpoints: rank r saves its own partial sums to ``.statistics.checkpoint.rank{r}.safetensors``; a shard
is only meaningful for the same number of processes, so resuming with another world size is refused on
every rank (the decision is agreed through a collective, so no rank waits forever for the others).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.statistics import STAT_KEYS, StatisticsAccumulator

T = TypeVar("T")

#: Environment variables a torchrun / accelerate launch sets for every worker.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: Plan keys that only describe the sharding, not the data: a checkpoint that differs only in these was
#: written by the same job run with another number of processes.
SHARD_PLAN_KEYS = ("world_size", "rank", "sharding")
#: Rank 0 solves the subspaces and writes the figures while the others wait in the final barrier: give the
#: group more than torch's 30-minute default so that a large model's solve does not time the others out.
DEFAULT_TIMEOUT = timedelta(hours=2)

_LAUNCH_HINT = (
    "launch with `torchrun --nproc_per_node K -m perceptalign ntps score …` (which sets RANK, WORLD_SIZE, "
    "LOCAL_RANK, MASTER_ADDR and MASTER_PORT), or unset these variables to run in one process"
)


@dataclass(frozen=True)
class LaunchEnvironment:
    """What a torchrun-style launcher told this process about the job."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str | None
    master_port: int | None


def _int_variable(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise PerceptAlignError(
            f"environment variable {name}={value!r} is not an integer; {_LAUNCH_HINT}."
        ) from exc


def detect_launch(environ: Mapping[str, str] | None = None) -> LaunchEnvironment | None:
    """Read a torchrun/accelerate launch from the environment; ``None`` when the process was not launched so.

    Raises :class:`PerceptAlignError` for an inconsistent environment (RANK without WORLD_SIZE, a rank
    outside ``[0, WORLD_SIZE)``, several processes but no MASTER_ADDR/MASTER_PORT to meet at).
    """
    env = os.environ if environ is None else environ
    rank = _int_variable(env, "RANK")
    world_size = _int_variable(env, "WORLD_SIZE")
    if rank is None and world_size is None:
        return None
    if rank is None or world_size is None:
        missing = "WORLD_SIZE" if world_size is None else "RANK"
        raise PerceptAlignError(
            f"RANK and WORLD_SIZE must be set together ({missing} is missing); {_LAUNCH_HINT}."
        )
    if world_size < 1:
        raise PerceptAlignError(f"WORLD_SIZE={world_size} must be at least 1; {_LAUNCH_HINT}.")
    if not 0 <= rank < world_size:
        raise PerceptAlignError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size}); {_LAUNCH_HINT}.")
    local_rank = _int_variable(env, "LOCAL_RANK")
    if local_rank is None:
        local_rank = rank
    if local_rank < 0:
        raise PerceptAlignError(f"LOCAL_RANK={local_rank} must be non-negative; {_LAUNCH_HINT}.")
    master_addr = env.get("MASTER_ADDR") or None
    master_port = _int_variable(env, "MASTER_PORT")
    if world_size > 1 and (master_addr is None or master_port is None):
        missing = " and ".join(
            n for n, v in (("MASTER_ADDR", master_addr), ("MASTER_PORT", master_port)) if v is None
        )
        raise PerceptAlignError(
            f"WORLD_SIZE={world_size} but {missing} is not set, so the processes cannot find each other; "
            f"{_LAUNCH_HINT}."
        )
    if master_port is not None and not 0 < master_port < 65536:
        raise PerceptAlignError(f"MASTER_PORT={master_port} is not a TCP port (1–65535); {_LAUNCH_HINT}.")
    return LaunchEnvironment(rank, world_size, local_rank, master_addr, master_port)


def launch_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank as the launcher set it (0 when not launched); never raises.

    For the CLI, which must decide whether to print before the job validates the environment.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    env = os.environ if environ is None else environ
    try:
        launch = detect_launch(env)
    except PerceptAlignError:
        rank = env.get("RANK", "0").strip()
        return int(rank) if rank.isdigit() else 0
    return 0 if launch is None else launch.rank


def rank_device(device: torch.device | str, context: DistributedContext | None) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` (modulo the visible GPUs) when ``device`` is CUDA and
    the run is distributed, whatever CUDA index was asked for (each process takes its own GPU); any other
    device, or a single-process run, keeps ``device``."""
    device = torch.device(device)
    if context is None or context.world_size == 1 or device.type != "cuda":
        return device
    return torch.device("cuda", context.local_rank % max(torch.cuda.device_count(), 1))


def choose_backend(device: torch.device | str | None = None) -> str:
    """NCCL for CUDA tensors when CUDA is usable, gloo otherwise (gloo is the CPU backend)."""
    device = torch.device(device or "cpu")
    return (
        "nccl" if device.type == "cuda" and torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    )


@dataclass
class DistributedContext:
    """This process's place in a data-parallel job, and the few collectives the statistics need."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes results and reports progress; the others only compute."""
        return self.rank == 0

    @property
    def reduce_device(self) -> torch.device:
        """Where tensors must be for a collective: NCCL only moves CUDA tensors."""
        if "gloo" in self.backend or "nccl" not in self.backend:
            return torch.device("cpu")
        return torch.device("cuda", self.local_rank % max(torch.cuda.device_count(), 1))

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (round-robin; see the module docstring)."""
        return shard_batches(items, self.rank, self.world_size)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_reduce_(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> None:
        """In-place all-reduce of one tensor, through the backend's device when that is not its own."""
        if self.world_size == 1:
            return
        target = self.reduce_device
        if tensor.device == target:
            dist.all_reduce(tensor, op=op)
            return
        moved = tensor.to(target)
        dist.all_reduce(moved, op=op)
        tensor.copy_(moved)

    def max_int(self, values: Sequence[int]) -> list[int]:
        """Element-wise maximum of small integer vectors over all ranks (used to agree on decisions)."""
        tensor = torch.tensor(list(values), dtype=torch.int64)
        self.all_reduce_(tensor, dist.ReduceOp.MAX)
        return [int(v) for v in tensor.tolist()]

    def all_reduce_statistics(self, accumulator: StatisticsAccumulator) -> None:
        """Sum every rank's statistics into ``accumulator`` in place, one tensor at a time."""
        all_reduce_statistics(accumulator, self)

    def close(self) -> None:
        """Leave the process group if this context created it (a group made by the caller stays)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def shard_batches(batches: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Batches ``rank, rank + K, rank + 2K, …`` of the deterministic batch list (K = ``world_size``)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise PerceptAlignError(f"rank {rank} is outside [0, world size {world_size}).")
    return list(batches[rank::world_size])


def all_reduce_statistics(accumulator: StatisticsAccumulator, context: DistributedContext) -> None:
    """SUM all-reduce of an accumulator's float64 sums and counts, in place, tensor by tensor.

    The accumulator's own sum tensors are reduced where they live (no :meth:`StatisticsAccumulator.sums`
    copy): peak extra memory is one d×d tensor, and only when the backend needs it on another device.
    M_xx and C0 keep only their upper triangle authoritative; the sum of upper triangles is the upper
    triangle of the sum, so reducing the stored tensors is exact.
    """
    if context.world_size == 1:
        return
    # The accumulator exposes its live sums only privately; reading them here avoids a full copy.
    accumulator.flush()  # pending float32 product blocks join the float64 sums first
    live = accumulator._sums
    for layer in accumulator.layers:
        for key in STAT_KEYS:
            context.all_reduce_(live[layer][key])
    counts = torch.tensor([accumulator.n_texts, accumulator.n_tokens], dtype=torch.int64)
    context.all_reduce_(counts)
    accumulator.n_texts, accumulator.n_tokens = (int(v) for v in counts.tolist())


def init_distributed(
    environ: Mapping[str, str] | None = None,
    *,
    device: torch.device | str | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> DistributedContext | None:
    """Join the data-parallel job this process was launched into; ``None`` for a single-process run.

    An already initialised process group (e.g. made by accelerate or the caller) is used as it is and left
    open; otherwise one is created from the launch environment with :func:`choose_backend` for ``device``
    and closed by :meth:`DistributedContext.close`. A world of one process returns ``None``, so that a
    ``torchrun --nproc_per_node 1`` run behaves exactly like a plain run.
    """
    if dist.is_available() and dist.is_initialized():
        world_size = dist.get_world_size()
        if world_size == 1:
            return None
        launch = detect_launch(environ)
        local_rank = launch.local_rank if launch is not None else dist.get_rank()
        return DistributedContext(dist.get_rank(), world_size, local_rank, str(dist.get_backend()))
    launch = detect_launch(environ)
    if launch is None or launch.world_size == 1:
        return None
    if not dist.is_available():
        raise PerceptAlignError(
            "this torch build has no torch.distributed; install a standard torch wheel or run in one process."
        )
    backend = choose_backend(device)
    if backend == "nccl":
        torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{_host_for_url(launch.master_addr)}:{launch.master_port}",
        rank=launch.rank,
        world_size=launch.world_size,
        timeout=timeout,
    )
    return DistributedContext(launch.rank, launch.world_size, launch.local_rank, backend, owns_group=True)


def _host_for_url(host: str | None) -> str:
    host = host or "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@contextlib.contextmanager
def main_process_first(context: DistributedContext | None) -> Iterator[None]:
    """Let rank 0 run the block alone first (it fills download/conversion caches), then the others.

    Without it every rank would convert the embedded model or fetch a dataset archive into the same cache
    directory at once, replacing each other's files while they are being read.
    """
    if context is None or context.world_size == 1:
        yield
        return
    if not context.is_main:
        context.barrier()
    yield
    if context.is_main:
        context.barrier()


# --------------------------------------------------------------------------------------------------
# per-rank checkpoints


def rank_checkpoint_path(path: str | os.PathLike[str], rank: int) -> Path:
    """``.statistics.checkpoint.safetensors`` → ``.statistics.checkpoint.rank{r}.safetensors``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{int(rank)}{path.suffix}")


def shard_plan(plan: Mapping[str, Any], context: DistributedContext) -> dict[str, Any]:
    """The checkpoint plan of one rank's shard: the job's plan plus how it was sharded."""
    return {**plan, "world_size": context.world_size, "rank": context.rank, "sharding": "round-robin"}


def conflicting_world_size(saved_plan: Any, plan: Mapping[str, Any]) -> int | None:
    """The world size of a checkpoint of the SAME job made with ANOTHER number of processes, else ``None``.

    A plan without ``world_size`` comes from a single-process run (world size 1). Checkpoints of another
    job (other data, model or batching) are not conflicts: they are ignored and overwritten, as in a
    single-process run.
    """
    if not isinstance(saved_plan, dict):
        return None
    want = json.loads(json.dumps(dict(plan)))
    if _job_part(saved_plan) != _job_part(want):
        return None
    saved_world = int(saved_plan.get("world_size", 1))
    return saved_world if saved_world != int(want.get("world_size", 1)) else None


def _job_part(plan: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in plan.items() if key not in SHARD_PLAN_KEYS}


def resume_shard(
    context: DistributedContext,
    checkpoint_path: Path,
    plan: Mapping[str, Any],
    *,
    accumulator_options: Mapping[str, Any] | None = None,
) -> tuple[StatisticsAccumulator | None, int]:
    """Load this rank's checkpoint if it belongs to this job and world size; all ranks decide together.

    ``checkpoint_path`` is the single-process checkpoint path; rank r reads its own ``.rank{r}`` file, and
    rank 0 also checks the single-process file. Returns (saved accumulator or None, next local batch);
    ``accumulator_options`` (device, wide_device, allow_tf32) place the loaded accumulator.
    Raises the same :class:`PerceptAlignError` on every rank when any rank found a checkpoint of this job
    made with another number of processes, or could not read its checkpoint.
    """
    own = rank_checkpoint_path(checkpoint_path, context.rank)
    want = json.loads(json.dumps(dict(plan)))
    resumed: tuple[StatisticsAccumulator | None, int] = (None, 0)
    conflict, failed, local_error = 0, 0, ""
    candidates = [own] + ([checkpoint_path] if context.is_main else [])
    for path in candidates:
        if not path.is_file():
            continue
        try:
            saved, extra = StatisticsAccumulator.load_checkpoint(path, **dict(accumulator_options or {}))
        except PerceptAlignError as exc:
            failed, local_error = 1, str(exc)
            break
        if path == own and extra.get("plan") == want:
            resumed = (saved, int(extra["next_batch"]))
        else:
            conflict = max(conflict, conflicting_world_size(extra.get("plan"), want) or 0)
    conflict, failed = context.max_int([conflict, failed])
    if failed:
        raise PerceptAlignError(
            local_error
            or f"another rank could not read its statistics checkpoint in {checkpoint_path.parent} (see its "
            "error); delete the broken .statistics.checkpoint*.safetensors file and rerun."
        )
    if conflict:
        raise PerceptAlignError(
            f"the statistics checkpoints in {checkpoint_path.parent} were written by a run of this job with "
            f"{conflict} process(es), but this run has {context.world_size}: a shard only resumes with the "
            f"same number of processes. Resume with `torchrun --nproc_per_node {conflict} …`"
            + (" (or without torchrun)" if conflict == 1 else "")
            + f", or delete {checkpoint_path.parent}/{checkpoint_path.stem}*{checkpoint_path.suffix} "
            "to start over."
        )
    return resumed


__all__ = [
    "DEFAULT_TIMEOUT",
    "LAUNCH_VARIABLES",
    "DistributedContext",
    "LaunchEnvironment",
    "all_reduce_statistics",
    "choose_backend",
    "conflicting_world_size",
    "detect_launch",
    "init_distributed",
    "launch_rank",
    "main_process_first",
    "rank_checkpoint_path",
    "rank_device",
    "resume_shard",
    "shard_batches",
    "shard_plan",
]
