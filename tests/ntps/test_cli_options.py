"""Shared `ntps` CLI pieces: options defined once read the same in every command; the job runner turns
bad input into exit code 2 and passes everything else through."""

from __future__ import annotations

import inspect

import click
import pytest
import typer
import typer.main
from typer.testing import CliRunner

from perceptalign.cli import app
from perceptalign.cli import options as opts
from perceptalign.cli.errors import exit_on_error, fail
from perceptalign.cli.ntps import run_with_progress
from perceptalign.io import PerceptAlignError


def _ntps_commands() -> dict[str, click.Command]:
    group = typer.main.get_command(app)
    return dict(group.commands["ntps"].commands)  # type: ignore[attr-defined]


def _option_of(alias: object, flag: str) -> tuple[list[str], str]:
    """Flags and help of a shared option alias, read through a throw-away command that uses it.

    The parameter is named after ``flag`` because typer derives the long flag from the parameter name
    when the alias does not spell it out.
    """
    name = flag.lstrip("-").replace("-", "_")

    def command(**_kwargs: object) -> None:
        """Only declares the option."""

    parameter = inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=alias)
    command.__signature__ = inspect.Signature([parameter])  # type: ignore[attr-defined]
    command.__annotations__ = {name: alias, "return": None}
    probe = typer.Typer()
    probe.command()(command)
    param = next(p for p in typer.main.get_command(probe).params if p.name == name)
    return sorted(param.opts), param.help


# Options every command that has them must take from cli/options.py (same flags, same help).
EVERYWHERE = {
    "--model": opts.ModelOption,
    "--dataset": opts.DatasetOption,
    "--dtype": opts.DtypeOption,
    "--max-length": opts.MaxLengthOption,
    "--text-column": opts.TextColumnOption,
    "--label-column": opts.LabelColumnOption,
    "--revision": opts.RevisionOption,
    "--trust-remote-code": opts.TrustRemoteCodeOption,
}
# Options of the extraction commands; lora/scratch document their own (NTPS-only, evaluation budget).
EXTRACTION_COMMANDS = ("score", "probe", "peers", "study", "prescreen")
EXTRACTION = {
    "--layers": opts.LayersOption,
    "--token-budget": opts.TokenBudgetOption,
    "--fractions": opts.FractionsOption,
    "--top-k": opts.TopKOption,
    "--device": opts.DeviceOption,
    "--device-map": opts.DeviceMapOption,
    "--stats-memory": opts.StatsMemoryOption,
}


def _uses(commands: dict[str, click.Command], names: tuple[str, ...] | None, flag: str) -> list:
    found = []
    for name, command in commands.items():
        if names is not None and name not in names:
            continue
        found += [(name, p) for p in command.params if flag in p.opts]
    return found


@pytest.mark.parametrize(
    ("flag", "alias", "names"),
    [(f, a, None) for f, a in EVERYWHERE.items()]
    + [(f, a, EXTRACTION_COMMANDS) for f, a in EXTRACTION.items()],
)
def test_shared_option_reads_the_same_in_every_command(flag, alias, names):
    flags, help_text = _option_of(alias, flag)
    users = _uses(_ntps_commands(), names, flag)
    assert users, f"no ntps command uses {flag}"
    for command, param in users:
        assert sorted(param.opts) == flags, command
        assert param.help == help_text, command


def test_every_model_and_data_command_takes_the_core_options():
    # The commands that load a model and a dataset must all offer the flags that say which and how.
    commands = _ntps_commands()
    for name in ("score", "probe", "peers", "lora", "scratch"):
        flags = {o for p in commands[name].params for o in p.opts}
        assert set(EVERYWHERE) <= flags, (name, set(EVERYWHERE) - flags)


def test_the_model_commands_take_the_placement_options():
    # One --device means one thing in score, probe, peers and study (study: LoRA training too); the
    # statistics memory cap exists where statistics are summed.
    commands = _ntps_commands()
    for name in ("score", "probe", "peers", "study"):
        params = {o: p for p in commands[name].params for o in p.opts}
        assert {"--device", "--device-map", "--dtype"} <= set(params), name
        assert params["--device"].default == "auto" and params["--dtype"].default == "auto", name
    for name in ("score", "study"):
        assert any("--stats-memory" in p.opts for p in commands[name].params), name
    for name in ("lora", "scratch"):  # training devices: no `auto`, their NTPS runs on the cpu
        device = next(p for p in commands[name].params if "--device" in p.opts)
        assert device.default == "cpu" and "Training device" in device.help


def _cli(body) -> typer.Typer:
    demo = typer.Typer()

    @demo.command()
    def run() -> None:
        body()

    @demo.command()
    def other() -> None:  # a second command keeps typer from collapsing the app into `run`
        """Unused."""

    return demo


def test_exit_on_error_turns_bad_input_into_exit_code_2():
    def body() -> None:
        with exit_on_error():
            raise PerceptAlignError("--thing is wrong; pass a right one.")

    result = CliRunner().invoke(_cli(body), ["run"])
    assert result.exit_code == 2
    assert "error:" in result.output and "--thing is wrong; pass a right one." in result.output
    assert "Traceback" not in result.output


def test_exit_on_error_lets_other_exceptions_through():
    def body() -> None:
        with exit_on_error():
            raise ValueError("a bug, not bad input")

    result = CliRunner().invoke(_cli(body), ["run"])
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)


def test_fail_prints_the_prefix_and_exits_2():
    result = CliRunner().invoke(_cli(lambda: fail("bad --x", prefix="[rank 1] ")), ["run"])
    assert result.exit_code == 2 and "[rank 1] error: bad --x" in " ".join(result.output.split())


def test_run_with_progress_passes_the_result_and_the_callbacks():
    seen: dict[str, object] = {}

    def job(*, on_status, on_start, on_batch):
        seen.update(on_status=on_status, on_start=on_start, on_batch=on_batch)
        on_status("working")
        on_start(4, 0)
        for _ in range(4):
            on_batch(1, 10)
        return 42

    def body() -> None:
        assert run_with_progress(job, "demo") == 42

    result = CliRunner().invoke(_cli(body), ["run"])
    assert result.exit_code == 0, result.output
    assert all(callable(f) for f in seen.values())
    assert "working" in result.output and "4/4" in result.output


def test_run_with_progress_without_a_bar_gives_no_progress_callbacks():
    seen: dict[str, object] = {}

    def job(**callbacks):
        seen.update(callbacks)
        raise PerceptAlignError("no such dataset; pick another.")

    def body() -> None:
        run_with_progress(job, "demo", show=False, error_prefix="[rank 3] ")

    result = CliRunner().invoke(_cli(body), ["run"])
    assert seen["on_start"] is None and seen["on_batch"] is None and callable(seen["on_status"])
    assert result.exit_code == 2 and "[rank 3] error: no such dataset" in " ".join(result.output.split())
