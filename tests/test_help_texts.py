"""Command lines a newcomer types first: help that exits 0, module entry points without warnings, options that
show their defaults."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from helpers import REPO, script
from tda import cli, pipeline
from tda.methods import REGISTRY


def test_pipeline_help_exits_zero_and_a_missing_experiment_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        pipeline.main(["--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m tda.pipeline EXPERIMENT [EXPERIMENT ...]")
    with pytest.raises(SystemExit) as e:
        pipeline.main([])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "EXPERIMENT" in err


def test_register_module_runs_without_a_runpy_warning():
    """`python -m tda.backends.custom` must not find itself imported already (runpy warns then): warnings are
    errors here, so any warning fails the run."""
    r = subprocess.run([sys.executable, "-W", "error", "-m", "tda.backends.custom", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("usage: python -m tda.backends.custom")


def test_run_tda_help_lists_every_method_once_punctuated(capsys):
    with pytest.raises(SystemExit) as e:
        script("run_tda").main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert not re.search(r"\.[.;]\s", text), text  # no doubled full stop, no full stop then semicolon
    for name in REGISTRY:
        assert f" {name}: " in text


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_option_shows_its_default(name):
    """An option with a default shows it as argparse fills it in; one without (None) says what it does instead."""
    p = cli.parser("x")
    cli.add_experiment_args(p)
    REGISTRY[name].add_arguments(p)
    formatter = p._get_formatter()
    flags = {"--device"} | {f"--{f.name}" for f in dataclasses.fields(REGISTRY[name])}
    checked = [a for a in p._actions if set(a.option_strings) & flags]
    assert len(checked) == len(flags)
    for action in checked:
        shown = formatter._expand_help(action)
        want = "default" if action.default is None else f"(default: {action.default})"
        assert want in shown, f"{name} {action.option_strings}: {shown!r}"
