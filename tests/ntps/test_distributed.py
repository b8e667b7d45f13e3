"""Distributed NTPS statistics: launch detection, sharding, per-rank checkpoints, and 2-process runs.

The 2-process runs (gloo on CPU) compare against the single-process statistics of the same float64 model.
Tolerance: the same padded batches go through the same model in both runs, so every batch contributes the
same float64 terms (up to BLAS thread-count effects of a few ulps); only the order of the float64
additions differs ((b0+b2+…)+(b1+b3+…) instead of b0+b1+b2+…). Reassociating n ≈ 20 additions moves a sum
by at most n·eps·Σ|terms| ≈ 20·1.1e-16·Σ|terms|, i.e. ~1e-14 relative to the largest entries; 1e-10
(relative to each tensor's largest entry, since single entries of C1 may cancel towards 0) leaves four
orders of magnitude of room yet catches any lost, duplicated or mis-scaled batch (≥ 1e-3 relative).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import traceback
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from perceptalign.io import PerceptAlignError, load_tensors, save_tensors_atomic
from perceptalign.ntps.datasets import load_text_dataset
from perceptalign.ntps.distributed import (
    DistributedContext,
    choose_backend,
    conflicting_world_size,
    detect_launch,
    init_distributed,
    launch_rank,
    rank_checkpoint_path,
    shard_batches,
)
from perceptalign.ntps.identity import statistics_metadata
from perceptalign.ntps.jobs.score import (
    CHECKPOINT_FILE,
    RESULTS_FILE,
    STATISTICS_FILE,
    ScoreConfig,
    run_score,
)
from perceptalign.ntps.measure import compute_statistics
from perceptalign.ntps.models import load_causal_lm, token_budget_batches
from perceptalign.ntps.statistics import STAT_KEYS, StatisticsAccumulator

MAX_LENGTH = 64
TOKEN_BUDGET = 96  # ~20 batches for the 120 toy texts: each rank gets ~10, several checkpoints
BLOCK_PAIRS = 1  # every batch is its own product block, so a checkpoint may follow any batch
LAYERS = [0, 1, 2]
REL_TOL = 1e-10  # see the module docstring
TORCHRUN_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MPLBACKEND": "Agg",
    "OMP_NUM_THREADS": "1",
}


def torchrun_env(rank: int = 0, world_size: int = 2, port: int = 29500) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def assert_same_statistics(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        if want[key].dtype == torch.int64:
            assert torch.equal(got[key], want[key]), key
            continue
        scale = float(want[key].abs().max())
        error = float((got[key] - want[key]).abs().max())
        assert error <= REL_TOL * scale, (key, error, scale)


# --------------------------------------------------------------------------------------------------
# launch detection (no processes)


def test_no_launch_variables_mean_single_process():
    assert detect_launch({}) is None
    assert launch_rank({}) == 0
    assert init_distributed({}) is None  # nothing to join: no process group is created
    assert not torch.distributed.is_initialized()


def test_torchrun_environment_is_parsed():
    launch = detect_launch({**torchrun_env(1, 4, 29511), "LOCAL_RANK": "0"})
    assert (launch.rank, launch.world_size, launch.local_rank) == (1, 4, 0)
    assert (launch.master_addr, launch.master_port) == ("127.0.0.1", 29511)
    assert launch_rank(torchrun_env(3, 4)) == 3
    # One process launched by torchrun is a plain single-process run (identical files and behaviour).
    assert init_distributed(torchrun_env(0, 1)) is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "0"}, "WORLD_SIZE is missing"),
        ({"WORLD_SIZE": "2"}, "RANK is missing"),
        ({**torchrun_env(), "RANK": "one"}, "RANK='one' is not an integer"),
        ({**torchrun_env(), "WORLD_SIZE": "0", "RANK": "0"}, "must be at least 1"),
        (torchrun_env(2, 2), r"RANK=2 is outside \[0, WORLD_SIZE=2\)"),
        ({**torchrun_env(), "LOCAL_RANK": "-1"}, "LOCAL_RANK=-1 must be non-negative"),
        ({k: v for k, v in torchrun_env().items() if k != "MASTER_PORT"}, "MASTER_PORT is not set"),
        ({**torchrun_env(), "MASTER_ADDR": ""}, "MASTER_ADDR is not set"),
        ({**torchrun_env(), "MASTER_PORT": "70000"}, "not a TCP port"),
    ],
)
def test_inconsistent_launch_environment_is_refused_with_the_fix(env, message):
    with pytest.raises(PerceptAlignError, match=message) as info:
        detect_launch(env)
    assert "torchrun --nproc_per_node" in str(info.value)
    # The CLI's printing decision never raises (run_score reports the error): the rank if readable, else 0.
    assert launch_rank(env) == (int(env["RANK"]) if env.get("RANK", "").isdigit() else 0)


def test_cli_reports_a_broken_launch_environment(tmp_path):
    from typer.testing import CliRunner

    from perceptalign.cli import app

    args = ["ntps", "score", "--dataset", "unused.csv", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, args, env={"RANK": "0", "WORLD_SIZE": None})
    assert result.exit_code == 2, result.output
    assert "WORLD_SIZE is missing" in result.output and "[rank 0]" not in result.output
    result = CliRunner().invoke(app, args, env={**torchrun_env(1, 2), "MASTER_PORT": "0"})
    assert result.exit_code == 2, result.output
    assert "[rank 1] error" in result.output and "not a TCP port" in result.output


def test_backend_is_gloo_for_cpu_tensors():
    assert choose_backend("cpu") == "gloo"
    assert choose_backend(None) == "gloo"
    if not torch.cuda.is_available():
        assert choose_backend("cuda") == "gloo"  # nothing to run NCCL on


def test_distributed_context_without_a_group_has_no_collectives_to_run():
    # A world of one never touches torch.distributed: reductions and barriers are no-ops.
    context = DistributedContext(rank=0, world_size=1, local_rank=0, backend="gloo")
    acc = StatisticsAccumulator([0], 4, 2)
    acc.update([torch.randn(2, 3, 4)], torch.ones(2, 3), torch.tensor([0, 1]))
    before = acc.sums()
    context.all_reduce_statistics(acc)
    context.barrier()
    assert all(torch.equal(before[key], value) for key, value in acc.sums().items())


# --------------------------------------------------------------------------------------------------
# sharding and checkpoint plans (no processes)


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_round_robin_shards_partition_the_batches_with_balanced_load(world_size):
    generator = torch.Generator().manual_seed(world_size)
    lengths = torch.randint(1, 80, (300,), generator=generator).tolist()
    batches = token_budget_batches(lengths, 256)
    shards = [shard_batches(batches, rank, world_size) for rank in range(world_size)]
    flat = sorted(i for shard in shards for batch in shard for i in batch)
    assert flat == list(range(len(lengths)))  # every text exactly once
    assert shards == [shard_batches(batches, rank, world_size) for rank in range(world_size)]  # deterministic
    counts = [len(shard) for shard in shards]
    assert max(counts) - min(counts) <= 1
    # For non-increasing batch costs, round-robin loads are ordered by rank and differ by at most the
    # first (largest) cost: rank r's i-th batch costs ≥ rank s's i-th batch (r < s) ≥ rank r's (i+1)-th.
    costs = sorted((float(c) for c in torch.rand(50, generator=generator)), reverse=True)
    loads = [sum(shard_batches(costs, rank, world_size)) for rank in range(world_size)]
    for r in range(world_size):
        for s in range(r + 1, world_size):
            assert 0 <= loads[r] - loads[s] <= costs[0] + 1e-12


def test_shard_of_a_rank_outside_the_world_is_refused():
    with pytest.raises(PerceptAlignError, match="outside"):
        shard_batches([[0]], 2, 2)


def test_rank_checkpoint_names():
    path = Path("/out") / CHECKPOINT_FILE
    assert rank_checkpoint_path(path, 3) == Path("/out/.statistics.checkpoint.rank3.safetensors")


def test_world_size_conflict_is_only_reported_for_the_same_job():
    job = {"model": "m", "data_sha256": "abc", "token_budget": 96, "n_batches": 20}
    two = {**job, "world_size": 2, "rank": 1, "sharding": "round-robin"}
    three = {**job, "world_size": 3, "rank": 1, "sharding": "round-robin"}
    assert conflicting_world_size(two, three) == 2
    assert conflicting_world_size(job, three) == 1  # a single-process checkpoint
    assert conflicting_world_size({**two, "rank": 0}, two) is None  # same world size: not a conflict
    assert conflicting_world_size({**two, "data_sha256": "other"}, three) is None  # another job: ignored
    assert conflicting_world_size(None, three) is None


# --------------------------------------------------------------------------------------------------
# two processes (torch.multiprocessing.spawn, gloo): the library path


class Interrupted(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop_after(n: int):
    seen: list[int] = []

    def on_batch(_texts: int, _tokens: int) -> None:
        seen.append(1)
        if len(seen) == n:
            raise Interrupted

    return on_batch


def _spawned_worker(rank: int, world_size: int, port: int, model: str, csv: str, work: str) -> None:
    """One rank of the spawned job: runs every scenario, records what it saw in work/report{rank}.json."""
    os.environ.update({**TORCHRUN_ENV, **torchrun_env(rank, world_size, port)})
    torch.set_num_threads(1)
    work_dir = Path(work)
    report: dict[str, object] = {}
    context = init_distributed()
    assert context is not None and context.backend == "gloo"
    try:
        # A: the whole job, each rank with its own output directory (as on nodes without a shared disk):
        # rank 1 must leave its directory empty.
        own = work_dir / f"own{rank}"
        config = ScoreConfig(
            model=model,
            dataset=csv,
            out=own,
            dtype="float64",
            max_length=MAX_LENGTH,
            token_budget=TOKEN_BUDGET,
        )
        progress: list[tuple[str, int]] = []
        result = run_score(
            config,
            on_status=lambda msg: progress.append(("status", 0)),
            on_start=lambda n, _: progress.append(("start", n)),
            on_batch=lambda n, _: progress.append(("batch", n)),
        )
        report["written"] = result.written
        report["results_empty"] = result.results == {}
        report["own_files"] = sorted(p.name for p in own.iterdir())
        report["progress"] = progress
        save_tensors_atomic(
            work_dir / f"run_score{rank}.safetensors",
            {
                f"layer{layer}.{key}": getattr(s, key)
                for layer, s in result.statistics.items()
                for key in STAT_KEYS
            },
        )
        # A rerun reuses rank 0's cache (rank 1's directory has none: it computes and all-reduces again).
        shared_run = work_dir / "cached"
        first = run_score(replace(config, out=shared_run))
        again = run_score(replace(config, out=shared_run))
        report["rerun"] = [first.reused_cache, again.reused_cache, again.written]
        report["rerun_equal"] = again.statistics[2].C1.equal(first.statistics[2].C1)

        loaded = load_causal_lm(model, dtype="float64")
        dataset = load_text_dataset(csv)
        identity = statistics_metadata(loaded, dataset, LAYERS, MAX_LENGTH, None)

        def stats(out: Path, **kwargs: object) -> StatisticsAccumulator:
            return compute_statistics(
                loaded,
                dataset,
                LAYERS,
                max_length=MAX_LENGTH,
                token_budget=TOKEN_BUDGET,
                checkpoint_path=out / CHECKPOINT_FILE,
                checkpoint_seconds=0.0,
                identity=identity,
                distributed=context,
                block_pairs=BLOCK_PAIRS,
                **kwargs,
            )

        # B: interrupted on both ranks after 3 of their batches, then resumed from the rank checkpoints.
        shared = work_dir / "shared"
        shared.mkdir(exist_ok=True)
        try:
            stats(shared, on_batch=_stop_after(3))
        except Interrupted:
            report["checkpoint_after_interrupt"] = rank_checkpoint_path(
                shared / CHECKPOINT_FILE, rank
            ).is_file()
        resumed_from: list[tuple[int, int]] = []
        shards: list[tuple[int, int]] = []
        resumed = stats(
            shared,
            on_resume=lambda done, total: resumed_from.append((done, total)),
            on_shard=lambda n, total: shards.append((n, total)),
        )
        report["resumed_from"] = resumed_from
        report["shard"] = shards
        save_tensors_atomic(work_dir / f"resumed{rank}.safetensors", resumed.sums())

        # C: rank 1's checkpoint claims 3 processes: EVERY rank must refuse (rank 0's own file is fine).
        conflict = work_dir / "conflict"
        conflict.mkdir(exist_ok=True)
        with contextlib.suppress(Interrupted):
            stats(conflict, on_batch=_stop_after(2))
        if rank == 1:
            path = rank_checkpoint_path(conflict / CHECKPOINT_FILE, 1)
            acc, extra = StatisticsAccumulator.load_checkpoint(path)
            extra["plan"]["world_size"] = 3
            acc.save_checkpoint(path, extra)
        context.barrier()
        try:
            stats(conflict)
        except PerceptAlignError as exc:
            report["conflict_error"] = str(exc)

        # D: a single-process checkpoint of the same job (seen by rank 0 only) is refused on every rank.
        single = work_dir / "single"
        if rank == 0:
            single.mkdir()
            with contextlib.suppress(Interrupted):
                compute_statistics(
                    loaded,
                    dataset,
                    LAYERS,
                    max_length=MAX_LENGTH,
                    token_budget=TOKEN_BUDGET,
                    checkpoint_path=single / CHECKPOINT_FILE,
                    checkpoint_seconds=0.0,
                    identity=identity,
                    on_batch=_stop_after(2),
                    block_pairs=BLOCK_PAIRS,
                )
        context.barrier()
        try:
            stats(single)
        except PerceptAlignError as exc:
            report["single_error"] = str(exc)
    except BaseException:
        report["crash"] = traceback.format_exc()
        raise
    finally:
        (work_dir / f"report{rank}.json").write_text(json.dumps(report))
        context.close()


@pytest.fixture(scope="module")
def spawned(tiny_llama, toy_csv, tmp_path_factory):
    work = tmp_path_factory.mktemp("spawned")
    torch.multiprocessing.spawn(
        _spawned_worker, args=(2, free_port(), str(tiny_llama), str(toy_csv), str(work)), nprocs=2, join=True
    )
    reports = [json.loads((work / f"report{rank}.json").read_text()) for rank in range(2)]
    return work, reports


@pytest.fixture(scope="module")
def single_process_sums(tiny_llama, toy_csv) -> dict[str, torch.Tensor]:
    loaded = load_causal_lm(str(tiny_llama), dtype="float64")
    dataset = load_text_dataset(str(toy_csv))
    return compute_statistics(
        loaded, dataset, LAYERS, max_length=MAX_LENGTH, token_budget=TOKEN_BUDGET
    ).sums()


def finalized(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    n = float(sums["n_texts"])
    return {key: value / n for key, value in sums.items() if key not in ("n_texts", "n_tokens")}


@pytest.mark.slow
def test_spawned_ranks_all_reduce_to_the_single_process_statistics(spawned, single_process_sums):
    work, reports = spawned
    assert all("crash" not in report for report in reports), reports
    want = finalized(single_process_sums)
    for rank in range(2):
        # Every rank holds the statistics of the WHOLE dataset after the all-reduce.
        assert_same_statistics(load_tensors(work / f"run_score{rank}.safetensors"), want)


@pytest.mark.slow
def test_only_rank_zero_writes_and_reports(spawned, single_process_sums):
    work, reports = spawned
    assert [r["written"] for r in reports] == [True, False]
    assert [r["results_empty"] for r in reports] == [False, True]
    assert reports[1]["own_files"] == []  # rank 1 wrote nothing (no checkpoint left behind either)
    assert set(reports[0]["own_files"]) == {
        RESULTS_FILE,
        STATISTICS_FILE,
        "statistics.json",
        "ntps_heatmap.png",
    }
    assert reports[1]["progress"] == []
    # Rerun in a shared directory: every rank reuses the cache, rank 0 alone writes again.
    assert [r["rerun"] for r in reports] == [[False, True, True], [False, True, False]]
    assert all(r["rerun_equal"] for r in reports)
    # Rank 0's progress bar counts its own shard: started with its share, advanced to exactly that share.
    progress = reports[0]["progress"]
    starts = [n for kind, n in progress if kind == "start"]
    advanced = sum(n for kind, n in progress if kind == "batch")
    assert len(starts) == 1 and starts[0] == advanced == reports[0]["shard"][0][0]
    n_texts = int(single_process_sums["n_texts"])
    assert 0 < starts[0] < n_texts
    # The cache rank 0 wrote holds the all-reduced statistics.
    cached = load_tensors(work / "own0" / STATISTICS_FILE)
    assert_same_statistics(cached, finalized(single_process_sums))
    data = json.loads((work / "own0" / RESULTS_FILE).read_text())
    assert data["n_texts"] == n_texts and data["n_tokens"] == int(single_process_sums["n_tokens"])


@pytest.mark.slow
def test_shards_partition_the_texts(spawned, single_process_sums):
    _, reports = spawned
    shards = [report["shard"][0] for report in reports]
    n_texts = int(single_process_sums["n_texts"])
    assert all(total == n_texts for _, total in shards)
    assert sum(n for n, _ in shards) == n_texts


@pytest.mark.slow
def test_interrupted_ranks_resume_from_their_own_checkpoints(spawned, single_process_sums):
    work, reports = spawned
    for rank, report in enumerate(reports):
        assert report["checkpoint_after_interrupt"]
        # Checkpoints are saved after each batch but the third batch was interrupted before its save.
        ((done, total),) = report["resumed_from"]
        assert done == 2 and total > done
        assert_same_statistics(load_tensors(work / f"resumed{rank}.safetensors"), single_process_sums)


@pytest.mark.slow
def test_resume_with_another_world_size_is_refused_on_every_rank(spawned):
    _, reports = spawned
    for report in reports:
        assert "with 3 process(es), but this run has 2" in report["conflict_error"]
        assert "--nproc_per_node 3" in report["conflict_error"]
        assert "with 1 process(es), but this run has 2" in report["single_error"]


# --------------------------------------------------------------------------------------------------
# torchrun: the command users run


@pytest.mark.slow
def test_torchrun_cli_matches_single_process(tiny_llama, toy_csv, tmp_path, single_process_sums):
    out = tmp_path / "torchrun"
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    command = [
        *launcher,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "perceptalign",
        "ntps",
        "score",
        "--model",
        str(tiny_llama),
        "--dataset",
        str(toy_csv),
        "--out",
        str(out),
        "--dtype",
        "float64",
        "--max-length",
        str(MAX_LENGTH),
        "--token-budget",
        str(TOKEN_BUDGET),
    ]
    env = {**os.environ, **TORCHRUN_ENV, "COLUMNS": "200"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [RESULTS_FILE, STATISTICS_FILE, "statistics.json", "ntps_heatmap.png"]
    )
    assert done.stdout.count("best layer at") == 1  # one summary: rank 0's
    assert_same_statistics(load_tensors(out / STATISTICS_FILE), finalized(single_process_sums))
    shutil.rmtree(out)
