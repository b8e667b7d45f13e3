"""Where NTPS runs: the device and dtype a spec names, and how many layers' statistics fit at once.

Why a module of its own: every job that loads a model (score, probe, peers, study) resolves the same
``--device`` / ``--dtype`` specs, and the statistics jobs size their passes the same way. A 4096-wide
model keeps 3·d² float64 values per layer (M_xx, C0, C1: ~400 MB), so the 33 layers of a 7B model need
~13 GB beside the model; when that does not fit, the layers are split into groups, each measured in its
own pass over the data (:func:`plan_layer_groups`), instead of failing or spilling to the host per batch.

Nothing here has been measured on real GPUs yet: the CUDA and MPS branches are written to the
documented torch APIs and tested with the availability checks monkeypatched.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.statistics.accumulator import _MEANS_ROWS as MEANS_ROWS

#: The device specs a user may give (``cuda:N`` stands for any index).
DEVICE_SPECS = ("auto", "cpu", "cuda", "cuda:N", "mps")
#: Share of the free memory of the statistics device that a plan may use: the rest is headroom for the
#: allocator's fragmentation and whatever else runs on the device.
DEFAULT_MEMORY_FRACTION = 0.8
_GB = 1e9
_CUDA_SPEC = re.compile(r"^cuda(?::(\d+))?$")
_DEVICE_HINT = "use auto, cpu, cuda, cuda:N or mps"


def resolve_device(spec: str | torch.device) -> torch.device:
    """The device a ``device`` spec names, refused when this machine lacks it.

    ``auto``: ``cuda:0`` when torch sees a CUDA device, else ``mps`` when available, else ``cpu``.
    ``cuda`` means ``cuda:0`` (an explicit index, so that the device recorded with a result is exact).
    """
    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not torch.backends.mps.is_available():
            raise PerceptAlignError(
                "`device` mps requested but torch sees no MPS device (Apple GPU, macOS 12.3+); use "
                "`device` cpu or auto."
            )
        return torch.device("mps")
    match = _CUDA_SPEC.match(text)
    if match is None:
        raise PerceptAlignError(f"unknown `device` {spec!r}; {_DEVICE_HINT}.")
    if not torch.cuda.is_available():
        raise PerceptAlignError(
            f"`device` {text} requested but torch sees no CUDA device (a CPU-only torch build, no driver, or "
            "CUDA_VISIBLE_DEVICES empty); use `device` cpu, or auto to take a GPU only when there is one."
        )
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise PerceptAlignError(
            f"`device` {text} is out of range: torch sees {count} CUDA device(s), cuda:0 to "
            f"cuda:{count - 1}; pick one of those (CUDA_VISIBLE_DEVICES renumbers them from 0)."
        )
    return torch.device("cuda", index)


def resolve_dtype(spec: str, device: torch.device | str) -> str:
    """The model dtype a ``dtype`` spec names on ``device``.

    ``auto``: bfloat16 on CUDA GPUs that compute in it natively (compute capability ≥ 8.0: A100, H100,
    RTX 30xx on), float32 elsewhere (CPU, MPS, older GPUs, where bfloat16 is emulated and slow). Explicit
    dtypes pass through, validated; float64 is refused on MPS, which has no float64.
    """
    from perceptalign.ntps.models import DTYPES

    device = torch.device(device)
    text = str(spec).strip().lower()
    if text == "auto":
        if device.type == "cuda" and _native_bfloat16(device):
            return "bfloat16"
        return "float32"
    if text not in DTYPES:
        raise PerceptAlignError(
            f"unknown `dtype` {spec!r}; choose auto or one of {', '.join(sorted(DTYPES))}."
        )
    if text == "float64" and device.type == "mps":
        raise PerceptAlignError(
            "`dtype` float64 cannot run on `device` mps (MPS has no float64); use float32 or `device` cpu."
        )
    return text


def _native_bfloat16(device: torch.device) -> bool:
    try:
        return torch.cuda.get_device_capability(device) >= (8, 0)
    except (AssertionError, RuntimeError):  # no usable CUDA: never reached after resolve_device
        return False


def check_device_map(device_map: str | None, device: torch.device) -> str | None:
    """``device_map``: None (the whole model on ``device``) or ``auto`` (accelerate spreads it over every
    visible GPU), which only makes sense with a CUDA ``device``."""
    if device_map is None:
        return None
    text = str(device_map).strip().lower()
    if text != "auto":
        raise PerceptAlignError(
            f"unknown `device_map` {device_map!r}; the only value is auto (spread a model too large for one "
            "GPU over all visible GPUs), or leave it unset."
        )
    if device.type != "cuda":
        raise PerceptAlignError(
            f"`device_map` auto spreads a model over several GPUs, but `device` is {device}; use `device` "
            "cuda with it, or leave `device_map` unset."
        )
    return text


# --------------------------------------------------------------------------------------------------
# memory of the statistics and the layer-group plan


def statistics_layer_bytes(
    hidden_size: int, n_classes: int, *, block_pairs: int, product_bytes: int = 4
) -> int:
    """Bytes one layer's :class:`~perceptalign.ntps.statistics.StatisticsAccumulator` holds.

    float64 M_xx, C0, C1 (d×d each) and M_xy (d×C); the C0/C1 product blocks (d×d each, in the product
    dtype: ``product_bytes`` 4 for float32, 8 for float64 models) when ``block_pairs`` > 0 (with 0 the
    layers share one block); the float64 buffer of ``MEANS_ROWS`` text means (256×d).
    """
    d = int(hidden_size)
    sums = 8 * (3 * d * d + d * int(n_classes))
    blocks = 2 * d * d * int(product_bytes) if block_pairs > 0 else 0
    return sums + blocks + 8 * MEANS_ROWS * d


def plan_layer_groups(
    layers: Sequence[int],
    hidden_size: int,
    n_classes: int,
    *,
    budget_bytes: int | None,
    block_pairs: int,
    product_bytes: int = 4,
) -> list[list[int]]:
    """Split ``layers`` into as few groups as fit ``budget_bytes`` (one pass over the data each).

    Groups are contiguous in the given order and as even as possible (33 layers at ≤ 12 per pass → 11,
    11, 11), so that the passes cost about the same. ``budget_bytes`` None: no limit (one group). A budget
    below one layer's :func:`statistics_layer_bytes` is refused, naming the minimum.
    """
    layers = [int(layer) for layer in layers]
    if not layers:
        raise PerceptAlignError("no layers to plan; pass at least one layer.")
    if budget_bytes is None:
        return [layers]
    per_layer = statistics_layer_bytes(
        hidden_size, n_classes, block_pairs=block_pairs, product_bytes=product_bytes
    )
    if budget_bytes < per_layer:
        raise PerceptAlignError(
            f"the statistics of one layer (d = {hidden_size}, {n_classes} classes) need "
            f"{format_bytes(per_layer)}, but only {format_bytes(max(budget_bytes, 0))} are available for "
            f"them; free memory on the device, use another `device`, or set `stats_memory` to at least "
            f"{math.ceil(per_layer / _GB * 100) / 100:g} GB."
        )
    most = budget_bytes // per_layer
    n_groups = -(-len(layers) // most)
    base, extra = divmod(len(layers), n_groups)
    groups, start = [], 0
    for index in range(n_groups):
        size = base + (1 if index < extra else 0)
        groups.append(layers[start : start + size])
        start += size
    return groups


@dataclass(frozen=True)
class LayerGroupPlan:
    """How the layers' statistics are split into passes, with the numbers that decided it."""

    groups: list[list[int]]
    layer_bytes: int
    budget_bytes: int | None
    device: str
    budget_source: str

    @property
    def n_layers(self) -> int:
        return sum(len(group) for group in self.groups)

    @property
    def needed_bytes(self) -> int:
        """Memory all layers would need in one pass."""
        return self.n_layers * self.layer_bytes

    def describe(self) -> str:
        """One line for a status callback, e.g. ``statistics: 33 layers in 3 passes of ≤ 11 layers
        (13.0 GB needed, 5.0 GB budget)``."""
        budget = (
            "no known limit" if self.budget_bytes is None else f"{format_bytes(self.budget_bytes)} budget"
        )
        where = f"{format_bytes(self.needed_bytes)} needed, {budget} on {self.device}"
        if len(self.groups) == 1:
            return f"statistics: {self.n_layers} layers in one pass ({where})"
        largest = max(len(group) for group in self.groups)
        return (
            f"statistics: {self.n_layers} layers in {len(self.groups)} passes of ≤ {largest} layers "
            f"({where}; budget from {self.budget_source})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "groups": [list(group) for group in self.groups],
            "n_passes": len(self.groups),
            "layer_bytes": self.layer_bytes,
            "needed_bytes": self.needed_bytes,
            "budget_bytes": self.budget_bytes,
            "budget_source": self.budget_source,
            "device": self.device,
        }


def format_bytes(n: float) -> str:
    """``13.0 GB``, ``412 MB``, ``36 kB``: decimal units, as ``stats_memory`` is given in GB."""
    for unit, size in (("GB", _GB), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if unit == "GB" else f"{n / size:.0f} {unit}"
    return f"{int(n)} B"


def statistics_memory_budget(
    device: torch.device | str,
    *,
    stats_memory: float | None = None,
    reserve_bytes: int = 0,
    fraction: float = DEFAULT_MEMORY_FRACTION,
) -> tuple[int | None, str]:
    """Bytes the statistics may use on ``device``, and where that number came from.

    ``stats_memory`` (GB, the user's override) wins. Otherwise: CUDA, ``fraction`` of the free memory
    :func:`torch.cuda.mem_get_info` reports (call it after the model is loaded); CPU and MPS (whose sums
    live in host memory, see :func:`~perceptalign.ntps.statistics.precision.precision_policy`),
    ``fraction`` of the host's available memory. ``reserve_bytes`` (the forward pass's activations) is
    taken off a measured budget. None when the host's memory cannot be read (then no limit is applied).
    """
    if stats_memory is not None:
        check_stats_memory(stats_memory)
        return int(float(stats_memory) * _GB), "`stats_memory`"
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return max(0, int(free * fraction) - reserve_bytes), f"free memory of {device}"
    available = available_host_memory()
    if available is None:
        return None, "unknown host memory"
    return max(0, int(available * fraction) - reserve_bytes), "available host memory"


def check_stats_memory(value: float | None) -> float | None:
    """``stats_memory``: None or a positive number of GB."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise PerceptAlignError(
            f"`stats_memory` must be a positive number of GB (e.g. 8 or 0.5), got {value!r}; leave it unset "
            "to use the free memory of the statistics device."
        )
    return float(value)


def available_host_memory() -> int | None:
    """Bytes of host memory available to new allocations: /proc/meminfo's MemAvailable (Linux), else the
    free physical pages ``os.sysconf`` reports; None when neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def forward_reserve_bytes(token_budget: int, hidden_size: int, n_hidden_states: int, model_dtype: str) -> int:
    """A rough bound on what one batch's forward pass and the product scratch buffers occupy on the device.

    Every hidden state of the batch is kept (``output_hidden_states``), ~4 more layer activations are live
    inside a block (attention and MLP intermediates), and the accumulator's scratch holds ~4 float32
    copies of one layer. Deliberately generous: too small a reserve means an out-of-memory error.
    """
    from perceptalign.ntps.models import DTYPES

    element = torch.empty((), dtype=DTYPES.get(model_dtype, torch.float32)).element_size()
    tokens_by_width = int(token_budget) * int(hidden_size)
    return tokens_by_width * ((int(n_hidden_states) + 8) * element + 4 * 4)


__all__ = [
    "DEFAULT_MEMORY_FRACTION",
    "DEVICE_SPECS",
    "LayerGroupPlan",
    "available_host_memory",
    "check_device_map",
    "check_stats_memory",
    "format_bytes",
    "forward_reserve_bytes",
    "plan_layer_groups",
    "resolve_device",
    "resolve_dtype",
    "statistics_layer_bytes",
    "statistics_memory_budget",
]
