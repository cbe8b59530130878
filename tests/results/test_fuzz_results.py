"""A hypothesis fuzzer over result files: random runs/epochs parquet files (random columns, types, values and
configurations, some under the names of good runs) and random bytes planted in a valid OUT; each reader run
through the CLI must exit 0 or 2, print no traceback, and print only short lines of plain text."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from crafted_helpers import METHODS, READERS, SEEDS, invoke, make_out, reader_args, run_id, sane
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KNOWN = {"runs": ["run_id", "experiment", "method", "dataset", "model", "loss", "task", "seed", "status",
                  "config", "selection", "epochs", "best_epoch", "final_test_accuracy", "best_test_accuracy",
                  "attempts", "started_at"],
         "epochs": ["run_id", "epoch", "test_accuracy", "test_nll", "val_accuracy", "train_loss", "lr", "time_s",
                    "test_per_class_recall"]}
GOOD_IDS = [run_id(m, s) for m in METHODS for s in SEEDS]
NASTY = ["\x1b[2J", "\x1b]0;t\x07", "\x9b31m", "\u202e", "\n", "\r", "\x00", "..", "/", "finished", "erm",
         "classification", "final"]

text = st.one_of(st.text(max_size=30), st.sampled_from(NASTY + GOOD_IDS),
                 st.lists(st.sampled_from(NASTY), max_size=4).map("".join))
json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | text,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                          max_leaves=12)


@st.composite
def configs(draw):
    kind = draw(st.sampled_from(["json", "mapping-like", "text", "deep"]))
    if kind == "json":
        return json.dumps(draw(json_value))
    if kind == "mapping-like":
        good = {"method": {"name": draw(text)}, "dataset": {"name": "digits"}, draw(text): draw(json_value)}
        return json.dumps(good)
    if kind == "deep":
        n = draw(st.integers(30, 5000))
        return "[" * n + "]" * n
    return draw(text)


def column(kind: str, n: int):
    """A strategy for one column of ``n`` values of one Arrow kind."""
    values = {"int": st.integers(-2**63, 2**63 - 1), "float": st.floats(allow_nan=True, allow_infinity=True),
              "text": text, "bool": st.booleans(), "config": configs(),
              "list": st.lists(st.floats(allow_nan=True), max_size=4),
              "list-text": st.lists(text, max_size=3)}[kind]
    return st.lists(st.one_of(st.none(), values), min_size=n, max_size=n)


@st.composite
def result_files(draw):
    """(relative path, bytes) of one planted file."""
    table = draw(st.sampled_from(["runs", "epochs"]))
    stem = draw(st.one_of(st.sampled_from(GOOD_IDS + ["evil"]),
                          st.text("abcxyz-_.\x1b\u202e", min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))))
    rel = f"{table}/{stem.replace('/', '_')}.parquet"
    if draw(st.booleans()) and draw(st.booleans()):
        return rel, draw(st.binary(max_size=300))
    n = draw(st.integers(0, 3))
    names = draw(st.lists(st.one_of(st.sampled_from(KNOWN[table]), text.filter(bool)), min_size=1, max_size=8,
                          unique=True))
    for key in ("run_id",) + (("status", "config") if table == "runs" else ("epoch",)):
        if key not in names and draw(st.integers(0, 4)):
            names.append(key)
    cols = {}
    for name in names:
        kind = "config" if name == "config" and draw(st.integers(0, 3)) else draw(
            st.sampled_from(["int", "float", "text", "bool", "list", "list-text"]))
        vals = draw(column(kind, n))
        if name == "run_id" and draw(st.booleans()):
            vals = [stem] * n  # the run the file is named after: the rows pass the first checks
        try:
            cols[name] = pa.array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            cols[name] = pa.array([None] * n)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(cols), sink)
    data = sink.getvalue().to_pybytes()
    if draw(st.integers(0, 5)) == 0:
        data = data[:draw(st.integers(0, len(data)))]  # truncated
    return rel, data


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_out(tmp_path_factory.mktemp("fuzz") / "out")


@settings(max_examples=int(os.environ.get("MIXCLI_FUZZ_EXAMPLES", 30)),  # more: a longer hunt
           deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(files=st.lists(result_files(), min_size=1, max_size=3), reader=st.sampled_from(READERS))
def test_readers_survive_random_result_files(base, files, reader):
    tmp = Path(tempfile.mkdtemp(prefix="mixcli-fuzz-"))
    try:
        out = shutil.copytree(base, tmp / "out")
        for rel, data in files:
            try:
                (out / rel).write_bytes(data)
            except OSError:  # a name the file system refuses
                continue
        code, stdout, stderr = invoke(*reader_args(reader, out, tmp))
        assert "Traceback" not in stdout + stderr, stderr
        assert code in (0, 2), stdout + stderr
        sane(stdout + stderr)
        if code == 2:
            assert len([line for line in stderr.splitlines() if line.startswith("error: ")]) == 1, stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
