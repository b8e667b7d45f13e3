"""NTPS on GPUs, the part a CPU can check: device/dtype resolution, the precision policy of the statistics,
the layer-group plan and grouped passes, and that `auto` on a machine without a GPU is today's CPU path.

Nothing here runs on a GPU: CUDA and MPS availability are monkeypatched where a branch needs them.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from perceptalign.cli import app
from perceptalign.io import PerceptAlignError
from perceptalign.ntps.api import place_model, score
from perceptalign.ntps.datasets import load_text_dataset
from perceptalign.ntps.distributed import DistributedContext, rank_device
from perceptalign.ntps.jobs.score import CHECKPOINT_FILE, ScoreConfig, run_score
from perceptalign.ntps.measure import compute_statistics
from perceptalign.ntps.models import as_loaded_model, input_device, load_causal_lm
from perceptalign.ntps.placement import (
    LayerGroupPlan,
    check_device_map,
    plan_layer_groups,
    resolve_device,
    resolve_dtype,
    statistics_layer_bytes,
    statistics_memory_budget,
)
from perceptalign.ntps.statistics import StatisticsAccumulator, dense_reference_statistics, kernels
from perceptalign.ntps.statistics.precision import matmul_tf32_allowed, precision_policy, tf32_disabled

torch.set_num_threads(1)


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    """torch believes in two CUDA devices (nothing is ever allocated on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


# --------------------------------------------------------------------------------------------------
# device and dtype resolution


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch, no_accelerator):
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("AUTO") == torch.device("cuda", 0)


def test_explicit_devices(two_gpus):
    assert resolve_device(" cpu ") == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda", 0)  # an explicit index, as recorded with results
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(PerceptAlignError, match=r"`device` cuda:2 is out of range.*cuda:0 to cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cuda", r"`device` cuda requested but torch sees no CUDA device.*use `device` cpu"),
        ("cuda:0", r"no CUDA device"),
        ("mps", r"`device` mps requested but torch sees no MPS device"),
        ("tpu", r"unknown `device` 'tpu'; use auto, cpu, cuda, cuda:N or mps"),
        ("cuda:x", r"unknown `device`"),
    ],
)
def test_unavailable_or_unknown_devices_are_refused(no_accelerator, spec, message):
    with pytest.raises(PerceptAlignError, match=message):
        resolve_device(spec)


def test_dtype_resolution(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_dtype("auto", cpu) == "float32"
    assert resolve_dtype("auto", "mps") == "float32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert resolve_dtype("auto", gpu) == "bfloat16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # T4: no bf16
    assert resolve_dtype("auto", gpu) == "float32"
    assert resolve_dtype("float16", gpu) == "float16" and resolve_dtype("Float64", cpu) == "float64"
    with pytest.raises(PerceptAlignError, match="unknown `dtype` 'half'; choose auto or one of"):
        resolve_dtype("half", cpu)
    with pytest.raises(PerceptAlignError, match="MPS has no float64"):
        resolve_dtype("float64", "mps")


def test_device_map_needs_cuda(two_gpus):
    assert check_device_map(None, torch.device("cpu")) is None
    assert check_device_map("auto", torch.device("cuda", 0)) == "auto"
    with pytest.raises(PerceptAlignError, match="`device_map` auto spreads a model over several GPUs"):
        check_device_map("auto", torch.device("cpu"))
    with pytest.raises(PerceptAlignError, match="unknown `device_map` 'balanced'"):
        check_device_map("balanced", torch.device("cuda", 0))


def test_torchrun_ranks_take_their_local_gpu(two_gpus):
    context = DistributedContext(rank=3, world_size=4, local_rank=1, backend="nccl")
    assert rank_device(torch.device("cuda", 0), context) == torch.device("cuda", 1)
    assert rank_device(torch.device("cuda", 0), None) == torch.device("cuda", 0)
    gloo = DistributedContext(rank=1, world_size=2, local_rank=1, backend="gloo")
    assert rank_device(torch.device("cpu"), gloo) == torch.device("cpu")


def test_input_device_of_a_dispatched_model(tiny_llama):
    loaded = load_causal_lm(str(tiny_llama))
    model = loaded.model
    assert loaded.device == loaded.statistics_device == input_device(model) == torch.device("cpu")
    model.hf_device_map = {"model.embed_tokens": 1, "model.layers": 0, "lm_head": 0}
    assert input_device(model) == torch.device("cuda", 1)  # where the embeddings are, not the first GPU
    model.hf_device_map = {"": "cpu"}
    assert input_device(model) == torch.device("cpu")
    model.hf_device_map = {"model.embed_tokens": "disk", "model.layers": 0}
    assert input_device(model) == torch.device("cpu")  # offloaded embeddings take host inputs
    del model.hf_device_map


# --------------------------------------------------------------------------------------------------
# the precision policy


def test_precision_policy_per_device():
    cpu = precision_policy("cpu")
    assert (cpu.product_dtype, cpu.sum_dtype, cpu.sum_device, cpu.wide_device) == (
        torch.float32,
        torch.float64,
        torch.device("cpu"),
        None,
    )
    gpu = precision_policy("cuda:1")
    assert gpu.sum_device == torch.device("cuda", 1) and gpu.wide_device is None and not gpu.allow_tf32
    mps = precision_policy("mps")  # no float64 on MPS: every float64 part on the host
    assert mps.product_dtype == torch.float32
    assert mps.sum_device == mps.wide_device == torch.device("cpu") and not mps.allow_tf32
    assert mps.accumulator_options() == {
        "device": torch.device("cpu"),
        "wide_device": torch.device("cpu"),
        "allow_tf32": False,
    }
    assert json.loads(json.dumps(gpu.as_dict()))["products"] == "float32"


@pytest.fixture(params=["legacy", "new", "global"])
def tf32_on(request):
    """TF32 switched on the three ways users do it: the legacy flag, torch ≥ 2.9's ``fp32_precision``
    (after which reading the legacy flag raises) and ``set_float32_matmul_precision("high")``."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision, torch.get_float32_matmul_precision()
    if request.param == "legacy":
        matmul.allow_tf32 = True
    elif request.param == "new":
        matmul.fp32_precision = "tf32"
    else:
        torch.set_float32_matmul_precision("high")
    assert matmul_tf32_allowed()
    yield
    matmul.fp32_precision = saved[0]  # "none" clears a per-backend setting of either API
    torch.set_float32_matmul_precision(saved[1])


def test_tf32_is_off_inside_and_restored_after(tf32_on):
    with tf32_disabled():
        assert not matmul_tf32_allowed()
    assert matmul_tf32_allowed()
    with pytest.raises(RuntimeError, match="a failing update"), tf32_disabled():
        raise RuntimeError("a failing update")
    assert matmul_tf32_allowed()


@pytest.mark.parametrize("allow", [False, True])
def test_statistics_products_run_without_tf32(tf32_on, monkeypatch, allow):
    seen = []
    original = kernels._upper_gram

    def spy(*args, **kwargs):
        seen.append(matmul_tf32_allowed())
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "_upper_gram", spy)
    acc = StatisticsAccumulator([0], 8, 2, allow_tf32=allow)
    acc.update([torch.randn(2, 16, 8)], torch.ones(2, 16, dtype=torch.long), torch.tensor([0, 1]))
    assert seen and all(flag is allow for flag in seen)
    assert matmul_tf32_allowed()  # the caller's setting is back


def _realistic_texts(seed: int = 0):
    """bfloat16 hidden states at an LLM's scale: lengths 8–256, per-dimension scales spread over an order
    of magnitude, three "massive activation" dimensions ×30 and a shared offset (hidden states are far
    from centred), 3 classes."""
    g = torch.Generator().manual_seed(seed)
    d, C, n = 64, 3, 48
    lengths = torch.randint(8, 257, (n,), generator=g).tolist()
    scale = torch.exp(torch.randn(d, generator=g) * 0.5)
    scale[:3] *= 30.0
    offset = torch.randn(d, generator=g) * 2.0
    texts = [(torch.randn(L, d, generator=g) * scale + offset).to(torch.bfloat16) for L in lengths]
    return texts, torch.randint(0, C, (n,), generator=g), d, C


def _stream(texts, labels, d, C, batch=8, **options):
    acc = StatisticsAccumulator([0], d, C, **options)
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        width = max(x.shape[0] for x in chunk)
        hidden = torch.zeros(len(chunk), width, d, dtype=torch.bfloat16)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, x in enumerate(chunk):
            hidden[row, : len(x)], mask[row, : len(x)] = x, 1
        acc.update([hidden], mask, labels[start : start + batch])
    return acc.finalize()[0]


def _relative(a, b):
    return float((a - b).norm() / b.norm())


def test_device_path_arithmetic_meets_the_precision_target():
    """bf16 hidden states → float32 products → float64 sums (the CUDA policy; on the CPU here), and the
    MPS arrangement (every float64 part on a separate `wide_device`, simulated on the CPU), against the
    dense per-text formula in float64 on the same bf16 values (so only the accumulation is measured)."""
    texts, labels, d, C = _realistic_texts()
    reference = dense_reference_statistics([x.double() for x in texts], labels, C)
    cuda_like = _stream(texts, labels, d, C, **precision_policy("cpu").accumulator_options())
    mps_like = _stream(texts, labels, d, C, device="cpu", wide_device="cpu", allow_tf32=False)
    for key in ("M_xx", "M_xy", "C0", "C1"):
        want = getattr(reference, key)
        for got in (cuda_like, mps_like):
            # Tolerance 1e-6 relative (Frobenius). The target between devices is 1e-5; float32 products of
            # blocks of ≤ 4096 token pairs with float64 carries and sums measure ~1e-7 here (C0/C1; the
            # float64 M_xx/M_xy ~1e-10), while TF32 products (below) measure ~2e-5 and bf16 products
            # ~1e-3, so 1e-6 passes the policy with a 10× margin and fails either regression.
            assert _relative(getattr(got, key), want) < 1e-6, key
        # Where the float64 work happens does not change a single bit of the arithmetic.
        assert torch.equal(getattr(cuda_like, key), getattr(mps_like, key)), key


def test_tf32_products_would_miss_the_target():
    """Why TF32 is switched off: C1 from operands rounded to TF32's 10-bit mantissa (what a TF32 GEMM does
    to its inputs), accumulated exactly, is ~2e-5 off on the data above, twice the 1e-5 target."""

    def tf32(x):
        bits = x.float().contiguous().view(torch.int32)
        return ((bits + (1 << 12)) & ~((1 << 13) - 1)).view(torch.float32).double()

    texts, _, d, _ = _realistic_texts()
    exact, rounded = torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
    for x in texts:
        x = x.double()
        prefix, nxt = x.cumsum(0)[:-1], x[1:]
        exact += prefix.T @ nxt
        rounded += tf32(prefix).T @ tf32(nxt)
    assert _relative(rounded, exact) > 1e-5


# --------------------------------------------------------------------------------------------------
# the layer-group plan


def test_layer_bytes_are_the_accumulators_footprint():
    d, C = 4096, 2
    sums = 8 * (3 * d * d + d * C)  # float64 M_xx, C0, C1, M_xy
    blocks = 2 * 4 * d * d  # float32 C0/C1 product blocks
    means = 8 * 256 * d  # the float64 text-means buffer
    assert statistics_layer_bytes(d, C, block_pairs=4096) == sums + blocks + means
    assert statistics_layer_bytes(d, C, block_pairs=0) == sums + means  # one block shared by all layers
    assert statistics_layer_bytes(d, C, block_pairs=4096, product_bytes=8) == sums + 2 * blocks + means


def test_accumulator_holds_what_the_plan_counts():
    d, C = 48, 3
    for block_pairs in (4096, 0):
        acc = StatisticsAccumulator([0, 1, 2], d, C, block_pairs=block_pairs)
        acc.update(
            [torch.randn(4, 16, d)] * 3, torch.ones(4, 16, dtype=torch.long), torch.tensor([0, 1, 2, 0])
        )
        held = sum(t.numel() * t.element_size() for layer in acc._sums.values() for t in layer.values())
        held += sum(t.numel() * t.element_size() for t in acc._means.values())
        blocks = {id(t): t for block in acc._blocks.values() for t in block.values()}
        held += sum(t.numel() * t.element_size() for t in blocks.values())
        shared = 2 * 4 * d * d if block_pairs == 0 else 0  # the one shared block, not per layer
        assert held == 3 * statistics_layer_bytes(d, C, block_pairs=block_pairs) + shared


def test_plan_groups_are_contiguous_even_and_fit():
    layers = list(range(33))
    per = statistics_layer_bytes(4096, 2, block_pairs=4096)
    groups = plan_layer_groups(layers, 4096, 2, budget_bytes=12 * per + 1, block_pairs=4096)
    assert [len(g) for g in groups] == [11, 11, 11]
    assert [layer for g in groups for layer in g] == layers
    assert plan_layer_groups(layers, 4096, 2, budget_bytes=None, block_pairs=4096) == [layers]
    assert plan_layer_groups(layers, 4096, 2, budget_bytes=10**12, block_pairs=4096) == [layers]
    assert [len(g) for g in plan_layer_groups(layers, 4096, 2, budget_bytes=per, block_pairs=4096)] == [
        1
    ] * 33
    plan = LayerGroupPlan(groups, per, 5 * 10**9, "cuda:0", "free memory of cuda:0")
    assert plan.describe().startswith(
        "statistics: 33 layers in 3 passes of ≤ 11 layers (18.0 GB needed, 5.0 GB"
    )
    assert plan.as_dict()["n_passes"] == 3


def test_a_budget_below_one_layer_names_the_minimum():
    with pytest.raises(PerceptAlignError, match=r"need 545 MB.*`stats_memory` to at least 0.55 GB"):
        plan_layer_groups([0, 1], 4096, 2, budget_bytes=10**8, block_pairs=4096)


def test_memory_budget_sources(monkeypatch):
    assert statistics_memory_budget("cuda:0", stats_memory=2.5) == (2_500_000_000, "`stats_memory`")
    monkeypatch.setattr("perceptalign.ntps.placement.available_host_memory", lambda: 10_000)
    assert statistics_memory_budget("cpu", reserve_bytes=1_000) == (7_000, "available host memory")
    assert statistics_memory_budget("mps")[0] == 8_000  # MPS sums live in host memory
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (50_000, 80_000))
    assert statistics_memory_budget("cuda:0", reserve_bytes=10_000) == (30_000, "free memory of cuda:0")
    with pytest.raises(PerceptAlignError, match="`stats_memory` must be a positive number of GB"):
        statistics_memory_budget("cpu", stats_memory=0)


# --------------------------------------------------------------------------------------------------
# on the tiny model: auto is today's CPU path, grouped passes equal one pass


@pytest.fixture(scope="module")
def tiny_setup(tiny_llama, toy_csv):
    loaded = load_causal_lm(str(tiny_llama))
    dataset = load_text_dataset(str(toy_csv), max_samples=60)
    return loaded, dataset


def _sums(loaded, dataset, **options):
    options = {"max_length": 64, "token_budget": 128, "block_pairs": 150, **options}
    return compute_statistics(loaded, dataset, loaded.layers, **options).sums()


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_auto_on_a_machine_without_gpu_is_the_cpu_path_bit_for_bit(tiny_llama, toy_csv, no_accelerator):
    dataset = load_text_dataset(str(toy_csv), max_samples=60)
    device = resolve_device("auto")
    auto = load_causal_lm(str(tiny_llama), device=device, dtype=resolve_dtype("auto", device))
    cpu = load_causal_lm(str(tiny_llama), device=resolve_device("cpu"), dtype="float32")
    default = load_causal_lm(str(tiny_llama))  # what every caller got before devices existed
    assert auto.device == auto.statistics_device == torch.device("cpu") and auto.dtype == "float32"
    reference = _sums(default, dataset)
    assert _equal(_sums(auto, dataset), reference) and _equal(_sums(cpu, dataset), reference)


def test_score_job_auto_and_cpu_agree_and_record_the_placement(tiny_llama, toy_csv, tmp_path, no_accelerator):
    common = {"model": str(tiny_llama), "dataset": str(toy_csv), "max_length": 64, "max_samples": 40}
    lines: list[str] = []
    auto = run_score(ScoreConfig(out=tmp_path / "auto", **common), on_status=lines.append)
    cpu = run_score(ScoreConfig(out=tmp_path / "cpu", device="cpu", dtype="float32", **common))
    assert auto.results["ntps"] == cpu.results["ntps"]
    for layer, stats in auto.statistics.items():
        assert all(
            torch.equal(a, b)
            for a, b in zip(stats.as_dict().values(), cpu.statistics[layer].as_dict().values(), strict=True)
        )
    data = json.loads((tmp_path / "auto" / "ntps.json").read_text())
    assert (data["device"], data["dtype"], data["device_map"]) == ("cpu", "float32", None)
    assert data["layer_groups"]["groups"] == [[0, 1, 2]] and data["statistics_precision"]["tf32"] is False
    assert any(line.startswith("statistics: 3 layers in one pass") for line in lines)
    meta = json.loads((tmp_path / "auto" / "statistics.json").read_text())
    assert "device" not in meta  # the cache identity leaves the device out (statistics_metadata)


def test_grouped_passes_equal_one_pass(tiny_setup):
    loaded, dataset = tiny_setup
    per_layer = statistics_layer_bytes(loaded.hidden_size, dataset.n_classes, block_pairs=150)
    plans: list[LayerGroupPlan] = []
    grouped = _sums(loaded, dataset, stats_memory=1.5 * per_layer / 1e9, on_plan=plans.append)
    assert [p.groups for p in plans] == [[[0], [1], [2]]]
    assert "3 passes of ≤ 1 layers" in plans[0].describe()
    # A layer's arithmetic never depends on the other layers: the groups reproduce one pass bit for bit.
    assert _equal(grouped, _sums(loaded, dataset))
    with pytest.raises(PerceptAlignError, match="`stats_memory` to at least"):
        _sums(loaded, dataset, stats_memory=0.5 * per_layer / 1e9)


def test_joining_layer_groups_refuses_parts_of_other_texts():
    a, b = StatisticsAccumulator([0], 8, 2), StatisticsAccumulator([1], 8, 2)
    mask, labels = torch.ones(2, 4, dtype=torch.long), torch.tensor([0, 1])
    a.update([torch.randn(2, 4, 8)], mask, labels)
    with pytest.raises(PerceptAlignError, match="cannot join accumulators of different texts"):
        StatisticsAccumulator.join_layers([a, b])
    b.update([torch.randn(2, 4, 8)], mask, labels)
    joined = StatisticsAccumulator.join_layers([a, b])
    assert joined.layers == [0, 1] and joined.n_texts == 2
    with pytest.raises(PerceptAlignError, match="shared layers"):
        StatisticsAccumulator.join_layers([a, a])


class Interrupted(Exception):
    pass


def test_grouped_run_resumes_without_mixing_groups(tiny_setup, tmp_path):
    loaded, dataset = tiny_setup
    memory = 2.5 * statistics_layer_bytes(loaded.hidden_size, dataset.n_classes, block_pairs=150) / 1e9
    full = _sums(loaded, dataset)
    calls: list[int] = []
    _sums(loaded, dataset, stats_memory=memory, on_batch=lambda n, t: calls.append(n))
    n_batches = len(calls) // 2  # two groups: [0, 1] and [2]
    checkpoint = tmp_path / CHECKPOINT_FILE
    seen: list[int] = []

    def stop_in_second_group(n_texts: int, n_tokens: int) -> None:
        seen.append(n_texts)
        if len(seen) == n_batches + 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        _sums(
            loaded,
            dataset,
            stats_memory=memory,
            checkpoint_path=checkpoint,
            checkpoint_seconds=0.0,
            on_batch=stop_in_second_group,
        )
    assert (tmp_path / f"{checkpoint.stem}.group0{checkpoint.suffix}").is_file()
    rerun: list[int] = []
    resumed = _sums(
        loaded,
        dataset,
        stats_memory=memory,
        checkpoint_path=checkpoint,
        checkpoint_seconds=0.0,
        on_batch=lambda n, t: rerun.append(n),
    )
    assert len(rerun) < n_batches  # group 0 was not streamed again, group 1 resumed mid-way
    assert _equal(resumed, full)
    assert not list(tmp_path.glob("*.group*"))  # finished groups are removed once joined


# --------------------------------------------------------------------------------------------------
# the Python API and the CLI


def test_api_score_places_only_what_it_is_asked_to(tiny_llama, no_accelerator):
    loaded = load_causal_lm(str(tiny_llama))
    model = loaded.model
    assert place_model(model) is model and next(model.parameters()).dtype == torch.float32  # auto: as is
    texts = ["good film " * (i % 5 + 1) for i in range(12)] + ["bad plot " * (i % 4 + 1) for i in range(12)]
    labels = ["pos"] * 12 + ["neg"] * 12
    auto = score(model, loaded.tokenizer, texts, labels, fractions=[0.5])
    cpu = score(model, loaded.tokenizer, texts, labels, fractions=[0.5], device="cpu", dtype="float32")
    assert auto.info["device"] == "cpu" and auto.info["dtype"] == "float32"
    assert auto.ntps.equals(cpu.ntps)
    with pytest.raises(PerceptAlignError, match="no CUDA device"):
        score(model, loaded.tokenizer, texts, labels, device="cuda")
    place_model(model, dtype="float64")
    assert as_loaded_model(model, loaded.tokenizer).dtype == "float64"


def _score_cli(tiny_llama, toy_csv, out, *extra):
    args = ["ntps", "score", "--model", str(tiny_llama), "--dataset", str(toy_csv), "--out", str(out)]
    return CliRunner().invoke(app, [*args, "--max-length", "64", "--max-samples", "30", *extra])


def test_cli_device_cpu_is_accepted(tiny_llama, toy_csv, tmp_path):
    result = _score_cli(tiny_llama, toy_csv, tmp_path / "cpu", "--device", "cpu", "--stats-memory", "1")
    assert result.exit_code == 0, result.output
    assert "statistics: 3 layers in one pass" in result.output
    assert json.loads((tmp_path / "cpu" / "ntps.json").read_text())["device"] == "cpu"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "cuda"], "--device cuda requested but torch sees no CUDA device"),
        (["--device", "gpu"], "unknown --device 'gpu'"),
        (["--device-map", "auto"], "--device-map auto spreads a model over several GPUs"),
        (["--stats-memory", "0"], "--stats-memory takes a positive number of GB"),
    ],
)
def test_cli_refuses_what_this_machine_cannot_do(
    tiny_llama, toy_csv, tmp_path, no_accelerator, extra, message
):
    result = _score_cli(tiny_llama, toy_csv, tmp_path / "no", "--device", "cpu", *extra)
    assert result.exit_code == 2
    text = " ".join(result.output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())  # unbox rich errors
    assert message in text
    assert not (tmp_path / "no" / "ntps.json").exists()
