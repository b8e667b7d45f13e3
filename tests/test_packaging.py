"""A non-editable install carries what the package needs at run time: its data and its one version."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import perceptalign

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_the_data_and_the_version(tmp_path):
    # Built from a copy of what a clone holds, so that no build/ or egg-info is left in (or reused from)
    # the working tree.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("perceptalign-*.whl")
    assert re.match(rf"perceptalign-{re.escape(perceptalign.__version__)}-", wheel.name)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "perceptalign/data/rdm_human_rt.csv.gz",
        "perceptalign/data/README.md",
        "perceptalign/py.typed",
    } <= names
    # Installed from the wheel alone (no source tree on the path), the human data load and verify.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import perceptalign, perceptalign.rtify as r; "
        f"assert perceptalign.__file__.startswith({str(target)!r}), perceptalign.__file__; "
        "print(len(r.load_rt_dataset('rdm-human')))"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert out.stdout.strip() == "58438"
