"""The fixed cost of a job, cut without giving up a guarantee: the epoch files written as often as 2% of the
run's time allows (the latest epoch end always reaching the disk when training stops on an exception, and
a run that lost its latest epochs to an abrupt end resuming exactly from an older checkpoint), and the runs
row a Store just wrote read back from memory exactly as from the file."""
from __future__ import annotations

import math

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from mixcli.results.store import Store, WRITE_OPTIONS, columns
from mixcli.training import checkpoints, engine

from conftest import TINY

FIVE = TINY.replace("method: erm", "method: {name: mixup, alpha: 1.0}").replace("epochs: 3", "epochs: 5")


def _epochs(out):
    return pd.read_parquet(out / "epochs").drop(columns="time_s").sort_values("epoch").reset_index(drop=True)


def _checkpoint_epoch(out) -> int:
    (path,) = (out / "jobs").glob("*/checkpoint.pt")
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


@pytest.fixture
def written(monkeypatch):
    """Never due by the time budget (a write would have to take no time): only the rule's other cases write.
    Returns the epochs of the checkpoints saved, in order."""
    monkeypatch.setattr(checkpoints, "WRITE_SHARE", 1e-30)
    saved = []
    real = Store.save_checkpoint

    def save(self, run_id, state):
        saved.append(int(state["epoch"]))
        real(self, run_id, state)

    monkeypatch.setattr(Store, "save_checkpoint", save)
    return saved


def test_the_first_and_last_epochs_are_always_written(cli, write, tmp_path, written):
    code, text = cli("run", write(FIVE), "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0, text
    assert written == [1, 5]
    assert _epochs(tmp_path / "o")["epoch"].tolist() == [1, 2, 3, 4, 5] and _checkpoint_epoch(tmp_path / "o") == 5


def _crash_in_epoch(monkeypatch, epoch: int, exc=KeyboardInterrupt):
    real, calls = engine.evaluate, {"n": 0}

    def evaluate(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2 * (epoch - 1):  # two splits per epoch
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(engine, "evaluate", evaluate)
    return real


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError("a plugin failed")], ids=["interrupt", "error"])
def test_an_exception_writes_the_latest_epoch_end_and_the_run_resumes_there(cli, write, tmp_path, monkeypatch,
                                                                            written, exc):
    p = write(FIVE)
    assert cli("run", p, "--out", tmp_path / "full", "--device", "cpu")[0] == 0
    written.clear()
    real = _crash_in_epoch(monkeypatch, 4, exc)
    code, _ = cli("run", p, "--out", tmp_path / "cut", "--device", "cpu")
    assert code != 0
    assert written == [1, 3]  # epoch 1 by the rule, epoch 3 (deferred) when the exception came
    assert _epochs(tmp_path / "cut")["epoch"].tolist() == [1, 2, 3] and _checkpoint_epoch(tmp_path / "cut") == 3
    monkeypatch.setattr(engine, "evaluate", real)
    written.clear()
    again = ["--retry-failed"] if isinstance(exc, Exception) else []  # (a failed run is retried when asked)
    assert cli("run", p, "--out", tmp_path / "cut", "--device", "cpu", *again)[0] == 0
    assert written == [4, 5]  # resumed after epoch 3: its first epoch, then the last
    pd.testing.assert_frame_equal(_epochs(tmp_path / "full"), _epochs(tmp_path / "cut"))


def test_an_abrupt_end_after_deferred_epochs_resumes_exactly_from_the_older_checkpoint(cli, write, tmp_path,
                                                                                       monkeypatch, written):
    """What a SIGKILL leaves when epochs 2-3 were not written yet: epoch 1's files. The rerun trains 2-5 from
    epoch 1's checkpoint and gives the same numbers as an uninterrupted run."""
    p = write(FIVE)
    assert cli("run", p, "--out", tmp_path / "full", "--device", "cpu")[0] == 0
    written.clear()
    # an abrupt end runs no Python: nothing pending is written (the writer only finishes what it had)
    monkeypatch.setattr(checkpoints.StoreWrites, "on_exception",
                        lambda self, run, exc: self.writer.close(raise_errors=False))
    real = _crash_in_epoch(monkeypatch, 4)
    assert cli("run", p, "--out", tmp_path / "cut", "--device", "cpu")[0] != 0
    assert written == [1] and _epochs(tmp_path / "cut")["epoch"].tolist() == [1]
    monkeypatch.setattr(engine, "evaluate", real)
    monkeypatch.undo()
    assert cli("run", p, "--out", tmp_path / "cut", "--device", "cpu")[0] == 0
    pd.testing.assert_frame_equal(_epochs(tmp_path / "full"), _epochs(tmp_path / "cut"))
    runs = pd.read_parquet(tmp_path / "cut" / "runs")
    assert runs["status"].tolist() == ["finished"] and runs["attempts"].tolist() == [2]


# ------------------------------------------------------------------------------------- the runs row
def _row(status: str) -> dict:
    return {"run_id": "r1", "experiment": "e", "method": "erm", "seed": 3, "status": status, "epochs": 2,
            "git_dirty": True, "git_commit": None, "threads": 1, "final_test_accuracy": 0.5,
            "best_test_accuracy": float("nan"), "config": '{"a": 1}', "error": None}


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert type(a[k]) is type(b[k]), k
        both_nan = isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])
        assert both_nan or a[k] == b[k], k


def test_a_row_read_back_from_memory_equals_the_row_read_from_the_file(tmp_path):
    store = Store(tmp_path)
    for status in ("running", "finished"):
        store.write_run(_row(status))
        mine, fresh = store.run_row("r1"), Store(tmp_path).run_row("r1")
        _same(mine, fresh)
        assert mine["status"] == status and list(mine) == list(columns("runs"))
        assert mine["seed"] == 3 and pd.isna(mine["git_commit"]) and mine["git_dirty"] == True  # noqa: E712
    mine["status"] = "changed by the caller"
    assert store.run_row("r1")["status"] == "finished"  # (a copy each time)


def test_a_row_replaced_by_another_writer_is_read_from_the_file(tmp_path):
    mine, other = Store(tmp_path), Store(tmp_path)
    mine.write_run(_row("running"))
    other.write_run({**_row("failed"), "error": "killed"})
    assert mine.run_row("r1")["status"] == "failed" and mine.run_row("r1")["error"] == "killed"
    (tmp_path / "runs" / "r1.parquet").write_bytes(b"garbage")
    assert other.run_row("r1") is None  # damaged: treated as absent, as before
    (tmp_path / "runs" / "r1.parquet").unlink()
    assert other.run_row("r1") is None


def test_result_files_are_plain_parquet_that_pandas_reads(tmp_path):
    store = Store(tmp_path)
    store.write_run(_row("finished"))
    store.write_epochs("r1", [{"epoch": 1, "train_loss": 0.3, "test_accuracy": 0.9, "test_per_class_recall": [1.0]}])
    assert WRITE_OPTIONS == {"use_dictionary": False, "write_statistics": False}
    for table in ("runs", "epochs"):
        meta = pq.ParquetFile(tmp_path / table / "r1.parquet").metadata
        col = meta.row_group(0).column(0)
        assert not col.is_stats_set
        assert "PLAIN_DICTIONARY" not in col.encodings and "RLE_DICTIONARY" not in col.encodings
        assert list(pd.read_parquet(tmp_path / table).columns) == list(columns(table))
    assert pd.read_parquet(tmp_path / "epochs")["test_per_class_recall"].iloc[0].tolist() == [1.0]
