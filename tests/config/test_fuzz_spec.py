"""Property-based fuzzing of experiment files (hypothesis): mutate valid files (values, keys, raw text) and
check that every outcome is a valid plan (jobs with run ids) or a MixcliError naming the file, never a crash.
Bounded (examples, no deadline) so the whole file runs in seconds."""
from __future__ import annotations

import copy
import string

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from mixcli.errors import MixcliError  # noqa: E402
from mixcli.config.jobs import expand  # noqa: E402
from mixcli.config.spec import load_experiment  # noqa: E402

VALID = [
    {"name": "fuzz", "dataset": {"name": "digits", "fraction": 0.5}, "model": {"name": "mlp", "widths": [8]},
     "method": "erm", "train": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05},
                                "schedule": {"name": "multistep", "milestones": [1]}},
     "eval": {"every": 1}, "seeds": [0, 1]},
    {"name": "fuzz-grid", "dataset": "digits", "model": {"name": "cnn", "width": 4},
     "method": {"name": "mixup", "alpha": 0.2, "off_after_epoch": 1}, "train": {"epochs": 3},
     "grid": {"method": ["erm", {"name": "manifold_mixup", "positions": [0, 1]}], "train.optimizer.lr": [0.1, 0.01]},
     "seeds": 2},
]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=string.printable + "\x00\x07é/\\.", max_size=12),
    st.sampled_from(["erm", "mixup", "cutmix", "manifold_mixup", "digits", "mlp", "cnn", "sgd", "cosine",
                     "../x", "/abs", "..", "", "0", "1e3", ".nan"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
keys = st.sampled_from(["name", "task", "dataset", "model", "method", "loss", "train", "eval", "seeds", "grid", "out",
                        "init_from", "dataset.fraction", "dataset.val_size", "model.widths", "model.width",
                        "method.alpha", "method.name", "method.positions", "method.off_after_epoch",
                        "train.epochs", "train.batch_size", "train.optimizer", "train.optimizer.lr",
                        "train.optimizer.momentum", "train.schedule.milestones", "train.schedule.warmup_epochs",
                        "train.iterations", "eval.every", "eval.selection", "grid.method", "grid.train.epochs",
                        "trian", "method.alpah", "seeds.0"])


def paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from paths(v, prefix + (k,))


def put(doc: dict, dotted: str, value) -> None:
    cur = doc
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(cur.get(p), dict):
            cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = value


def outcome(path) -> None:
    """A plan or a MixcliError that names the file; anything else fails the property."""
    try:
        jobs = expand(load_experiment(path))
    except MixcliError as exc:
        msg = str(exc)
        assert msg.strip() and str(path) in msg.splitlines()[0], msg
        assert "Traceback" not in msg
        return
    assert jobs and all(j.run_id and isinstance(j.config, dict) for j in jobs)
    assert len({j.run_id for j in jobs}) == len(jobs)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(base=st.sampled_from(VALID), edits=st.lists(st.tuples(keys, values, st.booleans()), min_size=1, max_size=3))
def test_mutated_values_give_a_plan_or_one_clear_error(tmp_path, base, edits):
    doc = copy.deepcopy(base)
    for key, value, delete in edits:
        if delete and "." not in key:
            doc.pop(key, None)
        else:
            put(doc, key, value)
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    outcome(path)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(base=st.sampled_from(VALID), cut=st.integers(min_value=0, max_value=10_000),
       insert=st.text(alphabet=string.printable + "&*!|>%@`{}[]\x00", max_size=8),
       drop=st.integers(min_value=0, max_value=5))
def test_mutated_text_gives_a_plan_or_one_clear_error(tmp_path, base, cut, insert, drop):
    text = yaml.safe_dump(base)
    i = cut % (len(text) + 1)
    path = tmp_path / "fuzz.yaml"
    path.write_bytes((text[:i] + insert + text[i + drop:]).encode("utf-8", "surrogatepass"))
    outcome(path)
