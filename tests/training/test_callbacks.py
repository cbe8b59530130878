"""The listener protocol of a run (mixcli.training.callbacks): no-op defaults, one dispatcher, order, errors,
and the hooks a real run calls."""
from __future__ import annotations

import pytest

from mixcli.training.callbacks import Callback, Callbacks


class Recorder(Callback):
    def __init__(self, name, log, fail_on=None):
        self.name, self.log, self.fail_on = name, log, fail_on

    def _hear(self, hook):
        self.log.append((self.name, hook))
        if hook == self.fail_on:
            raise RuntimeError(f"{self.name} broke in {hook}")

    def on_start(self, run):
        self._hear("start")

    def on_step(self, run, loss):
        self._hear("step")

    def on_evaluate(self, run, row):
        row[self.name] = 1
        self._hear("evaluate")

    def on_epoch_end(self, run, row):
        self._hear("epoch_end")

    def on_end(self, run, result):
        self._hear("end")

    def on_exception(self, run, exc):
        self._hear("exception")


def test_base_hooks_do_nothing_and_keep_nothing():
    cb = Callback()
    for hook, args in (("on_start", ()), ("on_step", (None,)), ("on_evaluate", ({},)), ("on_epoch_end", ({},)),
                       ("on_end", ({},)), ("on_exception", (RuntimeError(),))):
        assert getattr(cb, hook)(None, *args) is None
    assert cb.state_dict() == {}


def test_listeners_are_called_in_order_and_evaluate_may_add_metrics():
    log = []
    cbs = Callbacks([Recorder("a", log), Recorder("b", log)])
    row = {}
    cbs.on_start(None)
    cbs.on_step(None, 0.5)
    cbs.on_evaluate(None, row)
    cbs.on_epoch_end(None, row)
    cbs.on_end(None, {})
    assert log == [(n, h) for h in ("start", "step", "evaluate", "epoch_end", "end") for n in "ab"]
    assert row == {"a": 1, "b": 1}


def test_every_listener_hears_the_exception_even_when_one_breaks():
    log = []
    cbs = Callbacks([Recorder("a", log, fail_on="exception"), Recorder("b", log)])
    cbs.on_exception(None, KeyboardInterrupt())
    assert log == [("a", "exception"), ("b", "exception")]


def test_a_listener_that_breaks_during_training_stops_it():
    cbs = Callbacks([Recorder("a", [], fail_on="epoch_end")])
    with pytest.raises(RuntimeError, match="a broke in epoch_end"):
        cbs.on_epoch_end(None, {})


class Counter(Callback):
    def __init__(self):
        self.n = 0

    def on_step(self, run, loss):
        self.n += 1

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_state_of_the_listeners_that_keep_some_round_trips():
    c = Counter()
    cbs = Callbacks([Callback(), c])
    for _ in range(3):
        cbs.on_step(None, 0.0)
    state = cbs.state_dict()
    assert state == {"Counter": {"n": 3}}
    fresh = Counter()
    Callbacks([Callback(), fresh]).load_state_dict(state)
    assert fresh.n == 3


def test_a_real_run_drives_the_progress_listener(tmp_path):
    from mixcli.config.jobs import expand
    from mixcli.config.spec import load_experiment
    from mixcli.results.store import Store
    from mixcli.training.engine import pick_device, run_job

    p = tmp_path / "e.yaml"
    p.write_text("name: cb\ndataset: {name: digits}\nmodel: {name: mlp, widths: [16]}\nmethod: mixup\n"
                 "train: {epochs: 2, batch_size: 256}\neval: {every: 2}\nseeds: [0]\nout: o\n")
    (job,) = expand(load_experiment(p))
    events = []

    class Progress:
        def start(self, job, epochs, steps, start_epoch):
            events.append(("start", epochs, steps, start_epoch))

        def step(self):
            events.append("step")

        def epoch(self, epoch, row):
            events.append(("epoch", epoch, "test_accuracy" in row))

    row = run_job(job, Store(job.out), pick_device("cpu"), Progress())
    assert row["status"] == "finished" and row["epochs"] == 2
    steps = events[0][2]
    assert events[0] == ("start", 2, steps, 1)
    assert events.count("step") == 2 * steps
    assert [e for e in events if isinstance(e, tuple) and e[0] == "epoch"] == [("epoch", 1, False), ("epoch", 2, True)]
