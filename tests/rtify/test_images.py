"""Image loaders: idx parsing against an independent writer, path discovery, checksums, digits resizing."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import perceptalign.rtify.experiments.natural.image_data as im
from perceptalign.io import PerceptAlignError


def write_idx(path: Path, array: np.ndarray, code: int, *, compress: bool) -> Path:
    """Independent idx writer (struct, not numpy byte-swapping) used to check the reader."""
    fmt = {0x08: "B", 0x09: "b", 0x0B: "h", 0x0C: "i", 0x0D: "f", 0x0E: "d"}[code]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    body = struct.pack(f">{array.size}{fmt}", *array.ravel().tolist())
    data = header + body
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize(
    ("code", "dtype"),
    [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32)],
)
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips_every_type(tmp_path, code, dtype, compress):
    rng = np.random.default_rng(code)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        array = rng.integers(info.min, info.max, size=(3, 4, 5), endpoint=True).astype(dtype)
    else:
        array = rng.standard_normal((3, 4, 5)).astype(dtype)
    path = write_idx(tmp_path / "x.idx", array, code, compress=compress)
    out = im.read_idx(path)
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array)  # exact: same bytes, only byte order changes


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x00\x08\x01" + b"\x00" * 8)
    with pytest.raises(PerceptAlignError, match="not an idx file"):
        im.read_idx(bad)
    good = write_idx(tmp_path / "good", np.arange(10, dtype=np.uint8), 0x08, compress=False)
    short = tmp_path / "short"
    short.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(PerceptAlignError, match="truncated or corrupt"):
        im.read_idx(short)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(good.read_bytes())[:-6])
    with pytest.raises(PerceptAlignError, match="does not decompress"):
        im.read_idx(broken)
    with pytest.raises(PerceptAlignError, match="cannot read"):
        im.read_idx(tmp_path / "missing")


def fake_fashion_dir(directory: Path, n_train: int = 6, n_test: int = 4, *, compress: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for (split, kind), (stem, _) in im.FASHION_MNIST_FILES.items():
        n = n_train if split == "train" else n_test
        if kind == "images":
            arr = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
            write_idx(directory / (stem + (".gz" if compress else "")), arr, 0x08, compress=compress)
        else:
            arr = (np.arange(n) % 10).astype(np.uint8)
            write_idx(directory / (stem + (".gz" if compress else "")), arr, 0x08, compress=compress)
    return directory


def test_find_fashion_mnist_precedence(tmp_path, monkeypatch):
    explicit = fake_fashion_dir(tmp_path / "explicit")
    env = fake_fashion_dir(tmp_path / "env", compress=False)  # uncompressed files are accepted too
    monkeypatch.setenv("PERCEPTALIGN_FASHION_MNIST", str(env))
    assert im.find_fashion_mnist(explicit) == explicit
    assert im.find_fashion_mnist() == env
    monkeypatch.setenv("PERCEPTALIGN_FASHION_MNIST", str(tmp_path / "nowhere"))
    # A configured but wrong location is an error, not a silent fallback to other data.
    with pytest.raises(
        PerceptAlignError, match=r"PERCEPTALIGN_FASHION_MNIST.*apt-get install dataset-fashion-mnist"
    ):
        im.find_fashion_mnist()
    with pytest.raises(PerceptAlignError, match="the path you passed"):
        im.find_fashion_mnist(tmp_path / "empty")


def test_load_fashion_mnist_verifies_checksums(tmp_path):
    directory = fake_fashion_dir(tmp_path / "fake")
    with pytest.raises(PerceptAlignError, match="checksum mismatch"):
        im.load_fashion_mnist(directory)
    data = im.load_fashion_mnist(directory, verify=False)
    assert data.train.images.shape == (6, 1, 28, 28) and data.test.images.shape == (4, 1, 28, 28)
    raw = im.read_idx(directory / "t10k-images-idx3-ubyte.gz")
    # Pixels are scaled by exactly 1/255 (float32 rounding only).
    torch.testing.assert_close(data.test.images[:, 0], torch.from_numpy(raw.astype(np.float32) / 255.0))
    assert list(data.test.ids) == ["test-00000", "test-00001", "test-00002", "test-00003"]
    assert data.n_classes == 10


@pytest.mark.skipif(not im.FASHION_MNIST_DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian_package():
    data = im.load_fashion_mnist()
    assert data.train.images.shape == (60000, 1, 28, 28) and len(data.test) == 10000
    # Fashion-MNIST is exactly balanced: 6,000 train and 1,000 test images per class.
    assert torch.bincount(data.train.labels).tolist() == [6000] * 10
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    assert float(data.train.images.min()) == 0.0 and float(data.train.images.max()) == 1.0


def test_load_digits_28_preserves_the_digits():
    from sklearn.datasets import load_digits

    data = im.load_digits_28()
    assert len(data.train) + len(data.test) == 1797
    assert data.train.images.shape[1:] == (1, 28, 28)
    assert float(data.train.images.min()) >= 0.0 and float(data.train.images.max()) <= 1.0
    border = torch.cat([data.train.images[..., :2, :].flatten(), data.train.images[..., -2:, :].flatten()])
    assert torch.all(border == 0)  # 2-pixel zero frame as in MNIST
    # Stratified split: every class's test share is within one image of 25 %.
    counts_test = torch.bincount(data.test.labels, minlength=10).numpy()
    counts_all = counts_test + torch.bincount(data.train.labels, minlength=10).numpy()
    assert np.all(np.abs(counts_test - 0.25 * counts_all) <= 1)
    # Shrinking the 24x24 centre back to 8x8 (3x3 block means) recovers the original digits closely:
    # bilinear upsampling only smooths, so the correlation is high but not 1.
    original = load_digits().images.astype(np.float32) / 16.0
    back = torch.nn.functional.avg_pool2d(data.test.images[:, :, 2:26, 2:26], 3)[:, 0].numpy()

    def standardise(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1)
        flat = flat - flat.mean(1, keepdims=True)
        return flat / np.linalg.norm(flat, axis=1, keepdims=True)

    corr = standardise(back[:20]) @ standardise(original).T  # Pearson r against every original digit
    matched = corr.max(axis=1)
    assert min(matched) > 0.95


def test_split_subset_keeps_ids_aligned():
    data = im.load_digits_28()
    sub = data.test.subset(np.array([5, 1, 7]))
    assert list(sub.ids) == ["test-00005", "test-00001", "test-00007"]
    assert torch.equal(sub.images[1], data.test.images[1]) and int(sub.labels[2]) == int(data.test.labels[7])


def test_load_image_dataset_errors():
    with pytest.raises(PerceptAlignError, match="unknown image dataset"):
        im.load_image_dataset("cifar")
    with pytest.raises(PerceptAlignError, match="ships with scikit-learn"):
        im.load_image_dataset("digits", "/tmp")
    with pytest.raises(PerceptAlignError, match="test_fraction"):
        im.load_digits_28(test_fraction=1.5)
    assert math.isclose(len(im.load_image_dataset("digits").test) / 1797, 0.25, abs_tol=0.01)
