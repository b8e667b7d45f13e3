"""The precision policy of the statistics on each kind of device: which dtype the products and sums use,
where the float64 work happens, and whether TF32 may touch the products.

Why it is written down per device: the NTPS statistics should not depend on where they were computed
beyond ~1e-5 relative (the cache identity leaves the device out for that reason, see
:func:`perceptalign.ntps.identity.statistics_metadata`), yet the devices differ in what they can do
exactly:

============  ==============  ============  =======================  ======
device        products        sums          float64 parts            TF32
============  ==============  ============  =======================  ======
cpu           float32 [1]_    float64, cpu  cpu                      n/a
cuda:N        float32 [1]_    float64, GPU  GPU (with the hidden     off
                                            states)
mps           float32         float64, cpu  cpu: each product block  n/a
                                            is flushed to the host
============  ==============  ============  =======================  ======

.. [1] float64 for a float64 model, as on the CPU today.

TF32 (Ampere and later GPUs; off by default for matmuls since torch 1.12, but often switched on with
``torch.set_float32_matmul_precision("high")`` or ``allow_tf32``) rounds both operands of a float32
product to a 10-bit mantissa: ~5e-4 relative error per product, fifty times the 1e-5 the statistics are
held to. So the statistics update runs with TF32 switched off for cuBLAS matmuls (:func:`tf32_disabled`;
the statistics make no convolutions, so cuDNN's flag is left alone) and the previous setting restored
afterwards; the model's forward pass, bfloat16 on CUDA by default, is not affected.

MPS has no float64 at all, so the prefix-sum carries, text totals and means, M_xx and the sums are made
on the CPU (the accumulator's ``wide_device``), while the float32 prefix sums and C0/C1 products stay on
the GPU; the float32 product block is moved to the host once per block, not per batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PrecisionPolicy:
    """Dtypes and placement of the statistics on one device (see the module docstring's table).

    ``wide_device`` None: the float64 work of an update happens on the device of the hidden states (so a
    model spread over several GPUs keeps each layer's work on its own GPU).
    """

    device: torch.device  # where the hidden states arrive and the float32 products run
    product_dtype: torch.dtype
    sum_dtype: torch.dtype
    sum_device: torch.device
    wide_device: torch.device | None
    allow_tf32: bool

    def accumulator_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~perceptalign.ntps.statistics.StatisticsAccumulator` that apply
        this policy."""
        return {"device": self.sum_device, "wide_device": self.wide_device, "allow_tf32": self.allow_tf32}

    def as_dict(self) -> dict[str, Any]:
        """The policy as JSON values (recorded with a job's results)."""
        return {
            "device": str(self.device),
            "products": str(self.product_dtype).removeprefix("torch."),
            "sums": str(self.sum_dtype).removeprefix("torch."),
            "sum_device": str(self.sum_device),
            "float64_work_on": "the hidden states' device"
            if self.wide_device is None
            else str(self.wide_device),
            "tf32": self.allow_tf32,
        }


def precision_policy(device: torch.device | str) -> PrecisionPolicy:
    """The policy for statistics whose hidden states arrive on ``device``."""
    device = torch.device(device)
    if device.type == "mps":
        host = torch.device("cpu")
        return PrecisionPolicy(device, torch.float32, torch.float64, host, host, allow_tf32=False)
    return PrecisionPolicy(device, torch.float32, torch.float64, device, None, allow_tf32=False)


@contextlib.contextmanager
def matmul_tf32(enabled: bool) -> Iterator[None]:
    """Allow (``enabled``) or forbid TF32 in cuBLAS float32 matmuls inside the block; restore the previous
    setting after it, also when it raises. Harmless without CUDA (the setting only steers CUDA kernels).

    Uses torch's ``fp32_precision`` setting where it exists (torch ≥ 2.9): once a program has set TF32
    through it, reading the legacy ``allow_tf32`` flag raises, whereas ``fp32_precision`` reads and
    restores cleanly whichever API the user chose.
    """
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        saved_precision = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = saved_precision
        return
    saved_flag = matmul.allow_tf32
    matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        matmul.allow_tf32 = saved_flag


def tf32_disabled() -> contextlib.AbstractContextManager[None]:
    """TF32 off for the statistics' cuBLAS matmuls inside the block (:func:`matmul_tf32`)."""
    return matmul_tf32(False)


def matmul_tf32_allowed() -> bool:
    """Whether cuBLAS float32 matmuls may use TF32 right now (for checks and tests)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        precision = matmul.fp32_precision
        if precision == "none":  # not set per backend: the global precision decides
            return torch.get_float32_matmul_precision() != "highest"
        return precision == "tf32"
    return bool(matmul.allow_tf32)


__all__ = ["PrecisionPolicy", "matmul_tf32", "matmul_tf32_allowed", "precision_policy", "tf32_disabled"]
