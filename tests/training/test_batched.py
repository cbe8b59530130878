"""train.batch_seeds: K seeds trained as one batched model (mixcli.training.batched).

Member k must be the unbatched run of seed k: checked weight by weight (and BatchNorm buffer by buffer)
after every step against the engine's own single-run step on the same seed, for mlp+erm, mlp+mixup,
cmixup on a small regression set, cnn+mixup and manifold mixup (members mixing at different positions);
then end to end through `mixcli run` (same run ids and columns, `batched` true), a member whose loss
becomes NaN (recorded failed, the others unchanged), an interrupted batched sweep resuming bit-exactly,
and validate's refusal."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mixcli.execution.batch_seeds import groups
from mixcli.execution.experiment import plan, run_experiment
from mixcli.results.store import RUN_COLUMNS, Store
from mixcli.training import batched
from mixcli.training.engine import build, resume
from mixcli.training.loop import train_mode, train_step, train_steps

CPU = torch.device("cpu")


def _csv(tmp_path):
    """A small regression set: y = sin(3 x0) + x1^2 + noise, 200 rows."""
    g = np.random.default_rng(0)
    x = g.uniform(-1, 1, (200, 3))
    y = np.sin(3 * x[:, 0]) + x[:, 1] ** 2 + 0.05 * g.standard_normal(200)
    p = tmp_path / "reg.csv"
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y}).to_csv(p, index=False)
    return p


def _jobs(write, text):
    return plan(write(text)).jobs


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unbatched(job, tmp_path, steps):
    """The engine's own single run of ``job``: its state after each of ``steps`` steps."""
    store = Store(tmp_path / "single")
    run, recipe = build(job, store, CPU)
    resume(run, None)
    run.epoch = run.ctx.epoch = 1
    run.method.start_epoch(1, run.ctx)
    train_mode(run.model, recipe.freeze_bn)
    states = []
    for batch in train_steps(run.data, job.config["train"]["batch_size"], steps):
        train_step(run.model, run.method, recipe.loss_fn, batch, run.ctx, run.opt, recipe.autocast)
        run.sched.step()
        run.ctx.step += 1
        states.append(_state(run.model))
    return states


def _batched(jobs, tmp_path, steps):
    store = Store(tmp_path / "batched")
    members = [batched.prepare(j, store, CPU) for j in jobs]
    for m in members:
        m.run.epoch = m.run.ctx.epoch = 1
        m.run.method.start_epoch(1, m.run.ctx)
        train_mode(m.run.model, m.recipe.freeze_bn)
    its = [train_steps(m.run.data, m.run.job.config["train"]["batch_size"], steps) for m in members]
    step = batched.BatchedStep(members)
    states = []
    try:
        for _ in range(steps):
            out = step([next(it) for it in its], True)
            assert all(ok for ok, _ in out), out
            for m in members:
                m.run.sched.step()
                m.run.ctx.step += 1
            states.append([_state(m.run.model) for m in members])
    finally:
        step.close()
    return states


CASES = {
    "mlp_erm": """
        name: t
        dataset: {name: digits}
        model: {name: mlp, widths: [32]}
        method: erm
        train: {epochs: 1, batch_size: 32, optimizer: {name: sgd, lr: 0.05}}
        seeds: 3
    """,
    "mlp_mixup_adamw": """
        name: t
        dataset: {name: digits}
        model: {name: mlp, widths: [32, 16]}
        method: {name: mixup, alpha: 0.4, mode: elem}
        train: {epochs: 1, batch_size: 32, optimizer: {name: adamw, lr: 0.01}}
        seeds: 3
    """,
    "cmixup_regression": """
        name: t
        task: regression
        dataset: {name: csv, path: CSV, targets: [y]}
        model: {name: mlp, widths: [32, 32]}
        method: {name: cmixup, alpha: 2.0, sigma: 0.5, position: 1}
        train: {epochs: 1, batch_size: 16, optimizer: {name: adam, lr: 0.003, weight_decay: 0}}
        seeds: 3
    """,
    "cnn_mixup_bn": """
        name: t
        dataset: {name: digits}
        model: {name: cnn, width: 4}
        method: {name: mixup, alpha: 1.0}
        train: {epochs: 1, batch_size: 32, optimizer: {name: sgd, lr: 0.05}}
        seeds: 2
    """,
    "cnn_manifold_positions": """
        name: t
        dataset: {name: digits}
        model: {name: cnn, width: 4}
        method: {name: manifold_mixup, alpha: 2.0, positions: [0, 1, 2]}
        train: {epochs: 1, batch_size: 32, optimizer: {name: sgd, lr: 0.05}}
        seeds: 3
    """,
}


@pytest.mark.parametrize("case", list(CASES))
def test_member_equals_unbatched_run_step_by_step(case, write, tmp_path):
    jobs = _jobs(write, CASES[case].replace("CSV", str(_csv(tmp_path))))
    steps = 6
    got = _batched(jobs, tmp_path, steps)
    for k, job in enumerate(jobs):
        want = _unbatched(job, tmp_path / f"s{k}", steps)
        for i in range(steps):
            for name, w in want[i].items():
                b = got[i][k][name]
                if w.dtype.is_floating_point:
                    torch.testing.assert_close(b, w, rtol=1e-5, atol=1e-6,
                                               msg=lambda m: f"{case} seed {k} step {i + 1} {name}: {m}")
                else:  # BatchNorm's num_batches_tracked
                    assert torch.equal(b, w), (case, k, i, name)
    # the members really differ (their own seeds), so the agreement is not that of identical copies
    assert not torch.equal(next(iter(got[-1][0].values())), next(iter(got[-1][1].values())))


SWEEP = """
name: sw
dataset: {name: digits}
model: {name: mlp, widths: [32]}
method: {name: mixup, alpha: 0.4}
train: {epochs: 2, batch_size: 64, optimizer: {name: sgd, lr: 0.05}, batch_seeds: BATCH}
seeds: 3
"""


def _sweep(write, tmp_path, batch, out, name="e.yaml"):
    result = run_experiment(write(SWEEP.replace("BATCH", batch), name), out=tmp_path / out, device="cpu",
                            in_process=True, warn=lambda line: None)
    return result, pd.read_parquet(tmp_path / out / "runs").sort_values("run_id").reset_index(drop=True)


def test_sweep_batched_rows_match_unbatched(write, tmp_path):
    res_b, b = _sweep(write, tmp_path, "true", "b")
    _, u = _sweep(write, tmp_path, "false", "u", "u.yaml")
    assert list(b.columns) == list(u.columns) == list(RUN_COLUMNS)
    assert list(b.run_id) == list(u.run_id)  # batch_seeds is not part of the run id
    assert b.batched.tolist() == [True] * 3 and u.batched.tolist() == [False] * 3
    assert set(b.status) == {"finished"} and {o.status for o in res_b.sweep.outcomes.values()} == {"finished"}
    np.testing.assert_allclose(b.final_test_nll, u.final_test_nll, rtol=1e-4)
    eb = pd.read_parquet(tmp_path / "b" / "epochs").sort_values(["run_id", "epoch"])
    eu = pd.read_parquet(tmp_path / "u" / "epochs").sort_values(["run_id", "epoch"])
    np.testing.assert_allclose(eb.train_loss, eu.train_loss, rtol=1e-5)
    # a second run finds them finished
    res, _ = _sweep(write, tmp_path, "true", "b")
    assert {o.status for o in res.sweep.outcomes.values()} == {"skipped"}


def test_nan_member_fails_alone(write, tmp_path, monkeypatch):
    real = batched.prepare

    def poisoned(job, *a, **k):
        m = real(job, *a, **k)
        if job.config["seed"] == 1:
            with torch.no_grad():
                next(m.run.model.parameters()).fill_(float("nan"))
        return m

    monkeypatch.setattr(batched, "prepare", poisoned)
    res, b = _sweep(write, tmp_path, "true", "b")
    _, u = _sweep(write, tmp_path, "false", "u", "u.yaml")
    st = dict(zip(b.seed, b.status))
    assert st == {0: "finished", 1: "failed", 2: "finished"}
    bad = b[b.seed == 1].iloc[0]
    assert "training loss became nan in epoch 1" in bad.error and bad.batched
    ok = b.seed != 1
    np.testing.assert_allclose(b[ok].final_test_nll, u[ok].final_test_nll, rtol=1e-4)  # the others unharmed
    assert res.sweep.outcomes[bad.run_id].status == "failed"


def test_interrupted_batched_sweep_resumes_exactly(write, tmp_path, monkeypatch):
    _, whole = _sweep(write, tmp_path, "true", "whole")
    real = batched.evaluate_all
    calls = []

    def interrupt(run, recipe):
        calls.append(run.epoch)
        if run.epoch == 2:
            raise KeyboardInterrupt("test")
        return real(run, recipe)

    monkeypatch.setattr(batched, "evaluate_all", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _sweep(write, tmp_path, "true", "cut")
    rows = pd.read_parquet(tmp_path / "cut" / "runs")
    assert set(rows.status) == {"interrupted"} and set(rows.epochs) == {1}
    monkeypatch.setattr(batched, "evaluate_all", real)
    _, cut = _sweep(write, tmp_path, "true", "cut")
    assert set(cut.status) == {"finished"} and set(cut.attempts) == {2}
    metrics = [c for c in whole.columns if c.startswith(("final_", "best_"))]
    pd.testing.assert_frame_equal(cut[metrics], whole[metrics])  # bit-exact

    # a batched checkpoint is a single run's: the same interruption resumed unbatched ends the same way
    monkeypatch.setattr(batched, "evaluate_all", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _sweep(write, tmp_path, "true", "cut2")
    monkeypatch.setattr(batched, "evaluate_all", real)
    _, cut2 = _sweep(write, tmp_path, "false", "cut2", "u.yaml")
    assert set(cut2.status) == {"finished"} and cut2.batched.tolist() == [False] * 3
    np.testing.assert_allclose(cut2.final_test_nll, whole.final_test_nll, rtol=1e-5)


def test_validate_refuses_what_cannot_batch(cli, write):
    path = write("""
        name: r
        dataset: {name: digits}
        model: {name: mlp, widths: [16], dropout: 0.2}
        method: automix
        train: {epochs: 1, compile: true, batch_seeds: true}
        seeds: 2
    """)
    code, text = cli("validate", path)
    assert code == 2
    assert "method 'automix' cannot be batched: it trains its own mixing network" in text
    assert "model 'mlp' with dropout 0.2 cannot be batched" in text
    assert "train.compile cannot be batched" in text
    assert "Traceback" not in text
    code, text = cli("validate", write(SWEEP.replace("BATCH", "true") + "loss: sumix\n"))
    assert code == 2 and "loss 'sumix' cannot be batched: it runs the model itself" in text
    code, text = cli("validate", write(SWEEP.replace("BATCH", "yes please")))
    assert code == 2 and "train.batch_seeds: expected one of false, true, auto" in text


def test_auto_batches_mlps_on_cpu_from_ten_seeds(write):
    def jobs(model, seeds):
        return _jobs(write, SWEEP.replace("BATCH", "auto").replace("{name: mlp, widths: [32]}", model)
                     .replace("seeds: 3", f"seeds: {seeds}"))

    assert [len(g) for g in groups(jobs("{name: mlp, widths: [32]}", 10), "cpu")] == [10]
    assert groups(jobs("{name: mlp, widths: [32]}", 9), "cpu") == []
    assert groups(jobs("{name: cnn, width: 4}", 10), "cpu") == []
    assert groups(jobs("{name: mlp, widths: [32]}", 10), "cuda") == []


def test_member_whose_method_raises_fails_alone(write, tmp_path, monkeypatch):
    from mixcli.api import PluginError

    real = batched.prepare

    def faulty(job, *a, **k):
        m = real(job, *a, **k)
        if job.config["seed"] == 2:
            method = m.run.method

            class Broken(type(method)):
                def __call__(self, model, batch, ctx):
                    if ctx.step == 3:
                        raise PluginError("a broken draw")
                    return super().__call__(model, batch, ctx)

            method.__class__ = Broken
        return m

    monkeypatch.setattr(batched, "prepare", faulty)
    _, b = _sweep(write, tmp_path, "true", "b")
    _, u = _sweep(write, tmp_path, "false", "u", "u.yaml")
    st = dict(zip(b.seed, b.status))
    assert st == {0: "finished", 1: "finished", 2: "failed"}
    assert b[b.seed == 2].error.iloc[0] == "a broken draw (in epoch 1)"
    ok = b.seed != 2
    np.testing.assert_allclose(b[ok].final_test_nll, u[ok].final_test_nll, rtol=1e-4)


AIRFOIL = Path(__file__).resolve().parents[3] / "shared" / "data" / "airfoil_self_noise.dat"


@pytest.mark.skipif(not torch.cuda.is_available() or not AIRFOIL.exists(), reason="needs CUDA and the Airfoil file")
def test_cuda_airfoil_ten_seeds_paired(write, tmp_path):
    """On CUDA the batched kernels differ from the unbatched ones: member and twin agree in distribution
    (paired over 10 seeds, the C-Mixup Airfoil protocol shortened to 5 epochs)."""
    text = f"""
        name: af
        task: regression
        dataset: {{name: airfoil, path: {AIRFOIL}, split: [1003, 300, 200], split_per_seed: true, scaling: minmax_all}}
        model: {{name: mlp, widths: [128, 128], activation: leaky_relu, negative_slope: 0.1}}
        method: {{name: cmixup, alpha: 2.0, sigma: 1.75, position: 1}}
        loss: mse
        train: {{epochs: 5, batch_size: 16, optimizer: {{name: adam, lr: 0.01, weight_decay: 0}},
                 schedule: constant, precision: fp32, batch_seeds: BATCH}}
        eval: {{selection: best}}
        seeds: 10
    """
    runs = {}
    for batch in ("true", "false"):
        run_experiment(write(text.replace("BATCH", batch), f"{batch}.yaml"), out=tmp_path / batch, device="cuda",
                       in_process=True, warn=lambda line: None)
        runs[batch] = pd.read_parquet(tmp_path / batch / "runs").sort_values("run_id")
    d = runs["true"].best_test_rmse.to_numpy() - runs["false"].best_test_rmse.to_numpy()
    assert len(d) == 10 and abs(d.mean()) <= 3 * d.std(ddof=1) / np.sqrt(10) + 1e-6
