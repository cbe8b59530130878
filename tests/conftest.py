"""Shared fixtures: tiny experiment files and a CLI runner."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixcli.cli import app

TINY = """\
name: tiny
dataset: {name: digits}
model: {name: mlp, widths: [32]}
method: erm
train:
  epochs: 3
  batch_size: 64
  optimizer: {name: sgd, lr: 0.05}
seeds: [0]
"""


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def write(tmp_path):
    """write(text, name='exp.yaml') -> path of a YAML file in tmp_path."""
    def _write(text: str, name: str = "exp.yaml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text))
        return p
    return _write


#: options of `mixcli run` that choose where the jobs execute
_WHERE = {"--jobs", "-j", "--executor", "--in-process"}


@pytest.fixture
def cli(runner):
    """cli(*args) -> (exit_code, combined output). A `run` that does not say where its jobs execute runs
    them --in-process, so that the test's monkeypatches reach the jobs (and no worker imports torch anew);
    the tests about worker processes pass --jobs or run `mixcli` as a subprocess."""
    def _cli(*args):
        args = [str(a) for a in args]
        if args[:1] == ["run"] and not _WHERE & set(args):
            args.append("--in-process")
        r = runner.invoke(app, args)
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise r.exception
        return r.exit_code, r.output
    return _cli
