"""Atomic writes and verified package archives."""

from __future__ import annotations

import hashlib
import subprocess

import pytest
import torch

from perceptalign import io
from perceptalign.io import PerceptAlignError


def test_atomic_write_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "a").write_text("1")
    with pytest.raises(ValueError), io.atomic_directory(target) as tmp:
        (tmp / "b").write_text("2")
        raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with io.atomic_directory(target) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_tensors_round_trip(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.float64).reshape(2, 3).t(), "b": torch.ones(2)}
    io.save_tensors_atomic(tmp_path / "t.safetensors", tensors, {"k": "v"})
    back = io.load_tensors(tmp_path / "t.safetensors")
    assert torch.equal(back["a"], tensors["a"]) and torch.equal(back["b"], tensors["b"])


@pytest.mark.parametrize(
    ("name", "project"),
    [
        ("vadersentiment==3.3.2", "vadersentiment"),
        ("vaderSentiment-3.3.2.tar.gz", "vadersentiment"),
        ("chatterbot_corpus-1.3.3-py2.py3-none-any.whl", "chatterbot-corpus"),
        ("chatterbot-corpus==1.3.3", "chatterbot-corpus"),
    ],
)
def test_archive_names_match_their_requirement(name, project):
    assert io._normalized_project(name) == project


def test_fetch_verifies_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPTALIGN_CACHE", str(tmp_path / "cache"))
    payload = b"archive bytes"

    def fake_pip(cmd, capture_output, text):
        dest = cmd[cmd.index("--dest") + 1]
        (tmp_path / "cache" / "archives").mkdir(parents=True, exist_ok=True)
        with open(f"{dest}/demo_pkg-1.0.tar.gz", "wb") as fh:
            fh.write(payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(io.subprocess, "run", fake_pip)
    with pytest.raises(PerceptAlignError, match="checksum mismatch"):
        io.fetch_package_archive("demo-pkg==1.0", "0" * 64)
    good = hashlib.sha256(payload).hexdigest()
    path = io.fetch_package_archive("demo-pkg==1.0", good)
    assert path.read_bytes() == payload
    # Second call finds the verified archive in the cache without calling pip.
    monkeypatch.setattr(io.subprocess, "run", lambda *a, **k: pytest.fail("pip called again"))
    assert io.fetch_package_archive("demo-pkg==1.0", good) == path


def test_fetch_failure_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPTALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        io.subprocess,
        "run",
        lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "No matching distribution"),
    )
    with pytest.raises(PerceptAlignError, match="could not download"):
        io.fetch_package_archive("nothing==0", "0" * 64)
