"""Library messages name parameters the Python way (`max_length`); the CLI shows them as its flags."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from perceptalign.cli import app
from perceptalign.cli.errors import cli_wording

LIBRARY = Path(__file__).resolve().parents[1] / "src" / "perceptalign"
_FLAG = re.compile(r"(?<![\w`-])--([a-z][a-z-]*)")


def test_backticked_parameters_become_the_commands_flags():
    message = "`max_length` must be ≥ 2; `dropout` bad; `overwrite` it; `not_a_parameter` stays"
    assert (
        cli_wording(message)
        == "--max-length must be ≥ 2; --lora-dropout bad; --overwrite it; `not_a_parameter` stays"
    )


def test_a_cli_error_shows_the_flag_a_library_error_names(tmp_path):
    result = CliRunner().invoke(
        app, ["ntps", "probe", "--dataset", "x.csv", "--out", str(tmp_path), "--test-fraction", "1.5"]
    )
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "--test-fraction must lie strictly between 0 and 1" in text, text


def test_library_messages_do_not_name_cli_flags():
    """A flag in library code belongs in a backticked command (`perceptalign ntps study … --measure lora`);
    a parameter is named as `parameter`, which the CLI rewrites (`--no-…` negations excepted)."""
    offenders = []
    for path in LIBRARY.rglob("*.py"):
        if "cli" in path.relative_to(LIBRARY).parts or path.name in ("io.py",):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if '"' not in line or "help=" in line or line.strip().startswith(("#", '"""', "``")):
                continue
            for match in _FLAG.finditer(line):
                inside_command = line[: match.start()].count("`") % 2 == 1
                if not inside_command and not match.group(1).startswith("no-"):
                    offenders.append(f"{path.relative_to(LIBRARY)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
