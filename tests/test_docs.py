"""The examples in the README and docs/ run as written (each page's python blocks in order, one session)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks(page: Path) -> list[str]:
    blocks = _BLOCK.findall(page.read_text(encoding="utf-8"))
    assert blocks, f"{page} has no python example"
    return blocks


def run_page(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(python_blocks(page), start=1):
        try:
            exec(compile(block, f"{page.name}, python block {number}", "exec"), namespace)
        except Exception as exc:  # name the block, so a failing example is found at once
            raise AssertionError(f"{page.name}, python block {number} failed: {exc!r}\n{block}") from exc
    return namespace


def test_readme_python_examples_run(tmp_path, monkeypatch):
    namespace = run_page(ROOT / "README.md", tmp_path, monkeypatch)
    result = namespace["result"]
    assert result.layers == [0] and 0.0 <= result.best(0.5).ntps <= 1.0


@pytest.mark.slow
def test_api_page_examples_run(tmp_path, monkeypatch):
    """Runs the embedded smollm2-135m on 120 texts (prepared by `perceptalign fetch`)."""
    namespace = run_page(ROOT / "docs" / "api.md", tmp_path, monkeypatch)
    assert namespace["again"].ntps.equals(namespace["streamed"].ntps)
