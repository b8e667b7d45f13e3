"""Labelled image sets for the natural-image RTify experiments: Fashion-MNIST (idx files) and sklearn digits.

Fashion-MNIST is read from the original idx files (gzip-compressed or not; never pickles). Where they
live: an explicit path, else ``$PERCEPTALIGN_FASHION_MNIST``, else the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``). The checksum is taken over the
DECOMPRESSED idx bytes: Debian recompressed the archives (their .gz md5s differ from the upstream
README), but the content is the upstream one, so one checksum accepts both sources.

sklearn's 8×8 ``load_digits`` ships inside scikit-learn, so tests and demos always have a real image set:
it is resized to 24×24 and padded to 28×28 (MNIST framing) so the same network runs on both.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from perceptalign.io import PerceptAlignError

__all__ = [
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEBIAN_DIR",
    "FASHION_MNIST_FILES",
    "ImageDataset",
    "ImageSplit",
    "find_fashion_mnist",
    "load_digits_28",
    "load_fashion_mnist",
    "load_image_dataset",
    "read_idx",
]

DATASETS: tuple[str, ...] = ("fashion-mnist", "digits")

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# (split, kind) → (file stem, sha256 of the decompressed idx bytes).
FASHION_MNIST_FILES: dict[tuple[str, str], tuple[str, str]] = {
    ("train", "images"): (
        "train-images-idx3-ubyte",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    ("train", "labels"): (
        "train-labels-idx1-ubyte",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    ("test", "images"): (
        "t10k-images-idx3-ubyte",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    ("test", "labels"): (
        "t10k-labels-idx1-ubyte",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}
_HOW_TO_GET = (
    "Install the Debian package (apt-get install dataset-fashion-mnist, files land in "
    f"{FASHION_MNIST_DEBIAN_DIR}), or download the four original idx files "
    "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz from github.com/zalandoresearch/fashion-mnist) into a directory and pass "
    "it as the path or set PERCEPTALIGN_FASHION_MNIST to it."
)
# idx type codes (third magic byte) → numpy big-endian dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class ImageSplit:
    """Images (N, 1, 28, 28) float32 in [0, 1], labels (N,) int64 and stable string ids (``test-00042``)."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray | torch.Tensor | slice) -> ImageSplit:
        """Rows ``index`` of the split (ids travel with the images so RT tables stay aligned)."""
        if isinstance(index, slice):
            return ImageSplit(self.images[index], self.labels[index], self.ids[index])
        idx = np.asarray(index, dtype=np.int64)
        t = torch.as_tensor(idx)
        return ImageSplit(self.images[t], self.labels[t], self.ids[idx])


@dataclass
class ImageDataset:
    """A train and a test split plus class names; ``checksum`` identifies the data (for caches)."""

    name: str
    train: ImageSplit
    test: ImageSplit
    class_names: tuple[str, ...]
    checksum: str

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an idx file (gzip or raw): 2 zero bytes, a type code, the rank, big-endian dims, data."""
    raw = _read_bytes(Path(path))
    return _parse_idx(raw, Path(path).name)


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PerceptAlignError(f"cannot read {path}: {exc}. {_HOW_TO_GET}") from exc
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise PerceptAlignError(
                f"{path} looks gzip-compressed but does not decompress ({exc}); the download is "
                f"probably truncated. Fetch it again. {_HOW_TO_GET}"
            ) from exc
    return data


def _parse_idx(raw: bytes, name: str) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise PerceptAlignError(
            f"{name} is not an idx file (bad magic number {raw[:4].hex()!r}); expected the original "
            f"MNIST-format files. {_HOW_TO_GET}"
        )
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    rank = raw[3]
    header = 4 + 4 * rank
    if rank == 0 or len(raw) < header:
        raise PerceptAlignError(f"{name}: idx header is truncated (rank {rank}, {len(raw)} bytes).")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=rank, offset=4))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise PerceptAlignError(
            f"{name}: idx header announces shape {dims} ({expected} bytes) but the file holds "
            f"{len(raw) - header} data bytes; the file is truncated or corrupt. Fetch it again."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _locate(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(path: str | os.PathLike[str] | None = None) -> Path:
    """Directory holding the four Fashion-MNIST idx files.

    The first source that is configured wins, with no silent fallback (a mistyped path must not quietly
    load other data): ``path`` → ``$PERCEPTALIGN_FASHION_MNIST`` → the Debian package location.
    """
    env = os.environ.get("PERCEPTALIGN_FASHION_MNIST")
    if path is not None:
        directory, origin = Path(path), "the path you passed"
    elif env:
        directory, origin = Path(env), "$PERCEPTALIGN_FASHION_MNIST"
    else:
        directory, origin = FASHION_MNIST_DEBIAN_DIR, "the Debian package location"
    missing = [stem for stem, _ in FASHION_MNIST_FILES.values() if _locate(directory, stem) is None]
    if missing:
        raise PerceptAlignError(
            f"Fashion-MNIST not found in {directory} ({origin}): missing {missing} (.gz or uncompressed). "
            f"{_HOW_TO_GET}"
        )
    return directory


def _to_split(images: np.ndarray, labels: np.ndarray, split: str) -> ImageSplit:
    ids = np.array([f"{split}-{i:05d}" for i in range(len(labels))])
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).div_(255.0).unsqueeze(1)
    return ImageSplit(images=x, labels=torch.from_numpy(labels.astype(np.int64)), ids=ids)


def load_fashion_mnist(path: str | os.PathLike[str] | None = None, *, verify: bool = True) -> ImageDataset:
    """Fashion-MNIST (60,000 train / 10,000 test, 28×28 grey) from idx files, checksums verified."""
    directory = find_fashion_mnist(path)
    arrays: dict[tuple[str, str], np.ndarray] = {}
    digest = hashlib.sha256()
    for key, (stem, sha) in FASHION_MNIST_FILES.items():
        file = _locate(directory, stem)
        assert file is not None  # find_fashion_mnist checked
        raw = _read_bytes(file)
        actual = hashlib.sha256(raw).hexdigest()
        if verify and actual != sha:
            raise PerceptAlignError(
                f"checksum mismatch for {file}: the decompressed idx bytes hash to {actual}, expected {sha}. "
                f"The file is corrupt or not the original Fashion-MNIST. {_HOW_TO_GET}"
            )
        digest.update(actual.encode())
        arrays[key] = _parse_idx(raw, file.name)
    for split in ("train", "test"):
        images, labels = arrays[(split, "images")], arrays[(split, "labels")]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise PerceptAlignError(
                f"Fashion-MNIST {split}: images {images.shape} and labels {labels.shape} do not pair up."
            )
    return ImageDataset(
        name="fashion-mnist",
        train=_to_split(arrays[("train", "images")], arrays[("train", "labels")], "train"),
        test=_to_split(arrays[("test", "images")], arrays[("test", "labels")], "test"),
        class_names=FASHION_MNIST_CLASSES,
        checksum=digest.hexdigest(),
    )


def load_digits_28(*, test_fraction: float = 0.25, seed: int = 0) -> ImageDataset:
    """sklearn's 1,797 handwritten 8×8 digits, resized (bilinear) to 24×24 and zero-padded to 28×28.

    A stratified random split (``test_fraction``) stands in for the missing official one.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise PerceptAlignError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    big = F.interpolate(small, size=(24, 24), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    images = F.pad(big, (2, 2, 2, 2)).numpy()
    labels = bunch.target.astype(np.int64)
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(index, test_size=test_fraction, random_state=seed, stratify=labels)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)

    def split(idx: np.ndarray, name: str) -> ImageSplit:
        ids = np.array([f"{name}-{i:05d}" for i in range(len(idx))])
        return ImageSplit(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]), ids)

    digest = hashlib.sha256(images.tobytes() + labels.tobytes() + f"{test_fraction}:{seed}".encode())
    return ImageDataset(
        name="digits",
        train=split(train_idx, "train"),
        test=split(test_idx, "test"),
        class_names=tuple(str(d) for d in range(10)),
        checksum=digest.hexdigest(),
    )


def load_image_dataset(name: str, path: str | os.PathLike[str] | None = None) -> ImageDataset:
    """``"fashion-mnist"`` (idx files, :func:`find_fashion_mnist`) or ``"digits"`` (ships with sklearn)."""
    if name == "fashion-mnist":
        return load_fashion_mnist(path)
    if name == "digits":
        if path is not None:
            raise PerceptAlignError("the digits dataset ships with scikit-learn; do not pass a path for it.")
        return load_digits_28()
    raise PerceptAlignError(f"unknown image dataset {name!r}; choose one of {list(DATASETS)}.")
