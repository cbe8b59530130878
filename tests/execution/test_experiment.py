"""The orchestrator a library user calls: mixcli.execution.experiment.run_experiment, without the CLI."""
from __future__ import annotations

import pandas as pd
import pytest
from conftest import TINY

from mixcli.errors import MixcliError
from mixcli.execution.executors import cores
from mixcli.execution.experiment import plan, run_experiment


def test_run_experiment_trains_records_and_skips_on_a_second_call(write, tmp_path):
    p = write(TINY.replace("seeds: [0]", "seeds: [0, 1]"))
    out = tmp_path / "out"
    seen = []
    result = run_experiment(p, ["train.epochs=2"], out=out, device="cpu",
                            on_start=lambda todo, ex: seen.append((len(todo.jobs), ex.slots)))
    assert seen == [(2, min(2, cores()))]  # one worker per core by default, no more than the jobs
    assert [o.status for o in result.sweep.outcomes.values()] == ["finished", "finished"]
    runs = pd.read_parquet(out / "runs")
    assert sorted(runs["run_id"]) == sorted(j.run_id for j in result.plan.targets)
    assert (runs["epochs"] == 2).all() and (runs["status"] == "finished").all()
    again = run_experiment(p, ["train.epochs=2"], out=out, device="cpu")
    assert [o.status for o in again.sweep.outcomes.values()] == ["skipped", "skipped"]


def test_run_experiment_refuses_bad_input_before_writing(write, tmp_path):
    p = write(TINY)
    out = tmp_path / "never"
    with pytest.raises(MixcliError, match="--device"):
        run_experiment(p, out=out, device="tpu")
    assert not out.exists()
    with pytest.raises(MixcliError, match="train.epochs"):
        plan(p, ["train.epochs=0"], out=out)
    assert not out.exists()


def test_retry_failed_with_nothing_failed_starts_nothing(write, tmp_path):
    p = write(TINY)
    result = run_experiment(p, ["train.epochs=1"], out=tmp_path / "o", device="cpu", retry_failed=True)
    assert result.sweep is None and result.failed == []
