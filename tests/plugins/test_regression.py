"""Regression: tabular datasets (airfoil, csv, diabetes, multimodal_1d), cmixup partners, mixed targets, CLI runs."""
from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import chisquare
from torch import nn
from typer.testing import CliRunner

from mixcli.api import Batch, Context, Model, PluginError, Split, mixed_regression_target
from mixcli.cli import app
from mixcli_plugins.datasets import regression as reg
from mixcli_plugins.datasets.regression import CSV, Airfoil, Diabetes, MultiModal1D
from mixcli_plugins.methods.cmixup import CMixup
from mixcli_plugins.methods.manifold_mixup import ManifoldMixup
from mixcli_plugins.methods.mixup import Mixup

REAL_AIRFOIL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "airfoil_self_noise.dat"


# ------------------------------------------------------------------------------------------------ airfoil
def write_airfoil(path: Path, n: int = 40) -> np.ndarray:
    """A file in the UCI format (tab-separated, no header, 6 numeric columns); returns its values."""
    rng = np.random.default_rng(7)
    data = np.column_stack([
        rng.choice([200, 800, 1250, 4000, 20000], n), rng.uniform(0, 22.2, n).round(1),
        rng.choice([0.0254, 0.1016, 0.3048], n), rng.choice([31.7, 39.6, 55.5, 71.3], n),
        rng.uniform(0.0004, 0.058, n).round(6), rng.uniform(103, 141, n).round(3)])
    path.write_text("".join("\t".join(f"{v:g}" for v in row) + "\n" for row in data))
    return np.loadtxt(path)


def test_airfoil_reads_uci_format_split_and_scaling(tmp_path):
    data = write_airfoil(tmp_path / "a.dat")
    b = Airfoil(path=str(tmp_path / "a.dat"), split=[24, 10, 6], split_seed=3, scaling="minmax_all").load()
    perm = np.random.default_rng(3).permutation(40)        # the documented split: one shuffle, cut in order
    x = (data[:, :5] - data[:, :5].min(0)) / (data[:, :5].max(0) - data[:, :5].min(0))
    for split, rows in ((b.train, perm[:24]), (b.val, perm[24:34]), (b.test, perm[34:])):
        assert split.y.dtype == torch.float32 and split.y.shape == (len(rows), 1)
        np.testing.assert_allclose(split.y.numpy()[:, 0], data[rows, 5], rtol=1e-6)   # raw dB, unscaled
        np.testing.assert_allclose(split.x.numpy(), x[rows], atol=1e-6)
    assert b.task == "regression" and b.out_dim == 1 and b.input_shape == (5,)
    # minmax_train: min/max from the training rows only -> train features span exactly [0, 1]
    t = Airfoil(path=str(tmp_path / "a.dat"), split=[24, 10, 6], split_seed=3).load()
    assert np.allclose(t.train.x.min(0).values, 0) and np.allclose(t.train.x.max(0).values, 1)
    np.testing.assert_allclose(t.val.y.numpy(), b.val.y.numpy())


def test_airfoil_bad_file_and_missing_file_and_offline(tmp_path, monkeypatch):
    bad = tmp_path / "bad.dat"
    bad.write_text("1\t2\t3\n4\t5\t6\n")
    with pytest.raises(PluginError, match="expected 6 whitespace-separated columns"):
        Airfoil(path=str(bad), split=[1, 0, 1]).load()
    with pytest.raises(PluginError, match="no such file.*download: true"):
        Airfoil(path=str(tmp_path / "nope.dat")).load()
    with pytest.raises(PluginError, match="is missing: set `download: true`"):
        Airfoil(root=str(tmp_path)).load()

    def offline(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(reg.urllib.request, "urlopen", offline)
    with pytest.raises(PluginError, match="could not download .*no network.*offline"):
        Airfoil(root=str(tmp_path / "cache"), download=True).load()
    assert not any((tmp_path / "cache").iterdir())           # no partial file left behind


# ----------------------------------------------------------------------------------------------------- csv
def write_csv(path: Path, rows: dict) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_csv_features_targets_domain_and_delimiters(tmp_path):
    n = 30
    rng = np.random.default_rng(0)
    cols = {"a": rng.normal(size=n), "b": rng.normal(size=n), "site": ["x", "y", "z"] * 10,
            "t1": np.arange(n, dtype=float), "t2": -np.arange(n, dtype=float)}
    write_csv(tmp_path / "d.csv", cols)
    b = CSV(path=str(tmp_path / "d.csv"), targets=["t1", "t2"], domain="site", split=[0.6, 0.2, 0.2],
            scaling="none").load()
    assert b.train.x.shape == (18, 2) and b.val.y.shape == (6, 2) and b.test.y.shape == (6, 2)
    allx = torch.cat([b.train.x, b.val.x, b.test.x]).numpy()
    ally = torch.cat([b.train.y, b.val.y, b.test.y]).numpy()
    dom = torch.cat([b.train.domain, b.val.domain, b.test.domain]).numpy()
    rows = ally[:, 0].astype(int)                            # t1 is the row number
    np.testing.assert_allclose(allx, np.column_stack([cols["a"], cols["b"]])[rows], rtol=1e-6)
    np.testing.assert_array_equal(ally[:, 1], -rows)
    np.testing.assert_array_equal(dom, rows % 3)             # x, y, z -> 0, 1, 2
    # the same table as TSV (sniffed) and with an explicit feature list
    pd.DataFrame(cols).to_csv(tmp_path / "d.tsv", sep="\t", index=False)
    t = CSV(path=str(tmp_path / "d.tsv"), targets=["t1"], features=["b"], scaling="none").load()
    assert t.train.x.shape[1] == 1 and t.out_dim == 1


def run_cli(tmp_path, dataset: dict, epochs: int = 1, methods=("erm",), widths=(16,), seeds=(0,)):
    import yaml

    doc = {"name": "t", "task": "regression", "dataset": dataset,
           "model": {"name": "mlp", "widths": list(widths), "activation": "leaky_relu"},
           "train": {"epochs": epochs, "batch_size": 16, "optimizer": {"name": "adam", "lr": 0.01,
                                                                      "weight_decay": 0.0},
                     "schedule": "constant"},
           "seeds": list(seeds), "grid": {"method": list(methods)}, "out": str(tmp_path / "out")}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(doc))
    return CliRunner().invoke(app, ["run", str(tmp_path / "e.yaml"), "--device", "cpu",
                                    "--in-process"])  # (the tests' monkeypatches reach the job)


def test_compare_shows_worst_domain_rmse_only_with_domains(tmp_path):
    n = 60
    path = write_csv(tmp_path / "d.csv", {"a": np.linspace(0, 1, n), "g": ["u", "v", "w"] * 20,
                                          "y": np.linspace(0, 1, n) * 3 + 1})
    res = run_cli(tmp_path, {"name": "csv", "path": str(path), "targets": ["y"], "domain": "g"}, epochs=2)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "out"), "--format", "json"])
    import json
    assert json.loads(res.output)["metrics"] == ["rmse", "mape", "pearson_r", "worst_domain_rmse"]


@pytest.mark.parametrize("case", ["missing_target", "non_numeric", "nan_label", "one_domain"])
def test_csv_bad_inputs_give_one_clear_error(tmp_path, case):
    n = 20
    cols = {"f1": [float(i) for i in range(n)], "f2": [1.5] * n, "group": ["a", "b"] * 10,
            "y": [float(i % 7) for i in range(n)]}
    ds = {"name": "csv", "targets": ["y"]}
    expect = []
    if case == "missing_target":
        ds["targets"] = ["price"]
        expect = ["no column 'price' (from targets)", "f1, f2, group, y"]
    elif case == "non_numeric":
        cols["f2"] = [1.5] * 4 + ["abc"] + [1.5] * 15
        expect = ["line 6, column 'f2'", "'abc' is not a finite number"]
    elif case == "nan_label":
        cols["y"] = [1.0] * 8 + [float("nan")] + [2.0] * 11
        expect = ["line 10, column 'y'", "the label is missing (NaN)"]
    else:
        cols["group"] = ["only"] * n
        ds["domain"] = "group"
        expect = ["domain column 'group' has a single value", "at least two domains"]
    path = write_csv(tmp_path / "bad.csv", cols)
    ds["path"] = str(path)
    res = run_cli(tmp_path, ds)
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "Traceback" not in text and str(path) in text
    for e in expect:
        assert e in text


def test_split_per_seed_is_the_reference_split_of_each_run_seed(tmp_path, monkeypatch):
    """split_per_seed: run seed s gets np.random.seed(s); np.random.permutation(N) (the C-Mixup protocol)."""
    import mixcli.data.tabular as tab

    seen = []
    real = tab.split_rows

    def record(n, split, rng):
        out = real(n, split, rng)
        seen.append(out)
        return out
    monkeypatch.setattr(tab, "split_rows", record)
    path = write_csv(tmp_path / "d.csv", {"a": np.arange(40.0), "y": np.arange(40.0) % 5})
    res = run_cli(tmp_path, {"name": "csv", "path": str(path), "targets": ["y"], "split": [20, 10, 10],
                             "split_per_seed": True}, seeds=[0, 1])
    assert res.exit_code == 0, res.output
    assert len(seen) == 2
    for s, (tr, va, te) in enumerate(seen):
        ref = np.random.RandomState(s).permutation(40)
        assert np.array_equal(np.concatenate([tr, va, te]), ref)
    assert not np.array_equal(seen[0][2], seen[1][2])


# ------------------------------------------------------------------------------------- diabetes, synthetic
def test_diabetes_real_data_seeded_split():
    a, b, c = Diabetes().load(), Diabetes().load(), Diabetes(split_seed=1).load()
    assert (len(a.train), len(a.val), len(a.test)) == (266, 88, 88) and a.input_shape == (10,)
    assert torch.equal(a.test.y, b.test.y) and not torch.equal(a.test.y, c.test.y)
    ally = np.sort(torch.cat([a.train.y, a.val.y, a.test.y]).numpy()[:, 0])
    from sklearn.datasets import load_diabetes
    np.testing.assert_allclose(ally, np.sort(load_diabetes().target), rtol=1e-6)   # every row once, raw
    assert float(a.train.x.min()) == 0.0 and float(a.train.x.max()) == 1.0
    with pytest.raises(PluginError, match=r"fractions must sum to 1"):
        Diabetes(split=[0.5, 0.6, 0.1])
    with pytest.raises(PluginError, match=r"row counts must sum to the number of rows \(442\)"):
        Diabetes(split=[300, 100, 10]).load()


def test_multimodal_generator_and_modes():
    ds = MultiModal1D(n=400, modes=3, gap=5.0, amplitude=0.4, frequency=2.0, noise=0.0, seed=4)
    x, y = ds.generate()
    rng = np.random.default_rng(4)
    xr = rng.uniform(-1, 1, 400)
    step = np.minimum(np.floor(3 * (xr + 1) / 2), 2)
    np.testing.assert_allclose(x[:, 0], xr)
    np.testing.assert_allclose(y[:, 0], 5 * step + 0.4 * np.sin(2 * np.pi * 2 * xr))
    # modes: labels cluster within +-amplitude of 0, 5, 10, one per third of [-1, 1]
    for k in range(3):
        in_k = (xr >= -1 + 2 * k / 3) & (xr < -1 + 2 * (k + 1) / 3)
        assert np.all(np.abs(y[in_k, 0] - 5 * k) <= 0.4 + 1e-9)
    b1, b2 = ds.load(), MultiModal1D(n=400, modes=3, gap=5.0, amplitude=0.4, frequency=2.0, noise=0.0,
                                     seed=4).load()
    assert (len(b1.train), len(b1.val), len(b1.test)) == (240, 80, 80)
    assert torch.equal(b1.train.x, b2.train.x) and b1.train.x.shape == (240, 1)
    with pytest.raises(PluginError, match="modes must be an integer >= 1"):
        MultiModal1D(modes=0)


# ----------------------------------------------------------------------------------------- methods
class Identity(Model):
    """logits = the (mixed) representation itself: lets a test read the mixed inputs from the output."""

    def __init__(self, d: int):
        super().__init__()
        self.stages = nn.ModuleList([nn.Identity(), nn.Identity()])
        self.pool = nn.Identity()
        self.classifier = nn.Identity()


def make_ctx(y: torch.Tensor, seed: int = 0, x: torch.Tensor | None = None) -> Context:
    x = y.clone() if x is None else x
    train = Split(x, y)
    return Context(task="regression", num_classes=None, device=torch.device("cpu"),
                   rng=np.random.default_rng(seed), train=train, fetch=lambda i: (x[i], y[i]), epochs=1,
                   model=Identity(y.shape[1]))


@pytest.mark.parametrize("method", [Mixup(alpha=2.0), ManifoldMixup(alpha=2.0, positions=[1]),
                                    CMixup(alpha=2.0, sigma=3.0, position=1), CMixup(sigma=3.0, position=0)])
def test_regression_targets_mix_like_inputs_multidim(method):
    """Inputs = labels (B, 3) and an identity network: the output IS the mixed input, so the mixed target
    lam*y1 + (1-lam)*y2 must equal it exactly, with one lambda for the whole batch."""
    y = torch.randn(64, 3, generator=torch.Generator().manual_seed(1)) * 4
    ctx = make_ctx(y)
    method.setup(ctx)
    idx = torch.arange(10, 42)
    out = method(ctx.model, Batch(y[idx], y[idx], idx), ctx)
    target = mixed_regression_target(out)
    lam = float(out.lam[0])
    assert torch.all(out.lam == lam) and 0 < lam < 1 and out.y_b.shape == (32, 3)
    torch.testing.assert_close(out.logits, target)
    torch.testing.assert_close(target, lam * y[idx] + (1 - lam) * out.y_b)
    assert not torch.equal(out.y_b, y[idx])                  # partners are other rows


def test_cmixup_tiny_sigma_self_pairs_and_huge_sigma_uniform():
    y = torch.linspace(100, 140, 50).unsqueeze(1)            # labels 0.8 dB apart
    x = torch.randn(50, 5)
    ctx = make_ctx(y, x=x)
    tiny = CMixup(sigma=1e-3, position=0)
    tiny.setup(ctx)
    idx = torch.arange(50)
    torch.testing.assert_close(tiny.partners(idx, ctx), idx)
    out = tiny(ctx.model, Batch(x, y, idx), ctx)             # every partner is itself: the batch is unchanged
    torch.testing.assert_close(out.logits, x)
    torch.testing.assert_close(mixed_regression_target(out), y)
    huge = CMixup(sigma=1e6)
    huge.setup(ctx)
    draws = huge.partners(torch.zeros(20000, dtype=torch.long), ctx)
    assert chisquare(np.bincount(draws.numpy(), minlength=50)).pvalue > 1e-3


@pytest.mark.parametrize("kernel,sigma", [("gaussian", 0.7), ("tophat", 1.25)])
def test_cmixup_partner_frequencies_match_kernel(kernel, sigma):
    y = torch.tensor([[0.0], [0.3], [0.5], [1.1], [1.2], [2.0], [2.4], [3.5]])
    ctx = make_ctx(y)
    m = CMixup(sigma=sigma, kernel=kernel, block_size=3)     # several blocks per call
    m.setup(ctx)
    anchor = 3
    draws = m.partners(torch.full((40000,), anchor), ctx).numpy()
    yn = y.numpy()[:, 0].astype(np.float64)
    d = np.abs(yn - yn[anchor])
    k = np.exp(-d ** 2 / (2 * sigma ** 2)) if kernel == "gaussian" else (d < sigma).astype(float)
    p = k / k.sum()
    counts = np.bincount(draws, minlength=8)
    assert counts[p == 0].sum() == 0
    assert chisquare(counts[p > 0], counts.sum() * p[p > 0] / p[p > 0].sum()).pvalue > 1e-3
    # reproducible from the run's seeded host generator
    again = make_ctx(y)
    assert np.array_equal(m.partners(torch.full((100,), anchor), again).numpy(),
                          m.partners(torch.full((100,), anchor), make_ctx(y)).numpy())


def test_cmixup_option_and_setup_errors():
    for kw, msg in (({"sigma": 0}, "sigma"), ({"kernel": "box"}, "kernel must be one of gaussian, tophat"),
                    ({"alpha": 0}, "alpha"), ({"position": -1}, "position must be an integer >= 0")):
        with pytest.raises(PluginError, match=msg):
            CMixup(**kw)
    ctx = make_ctx(torch.randn(8, 1))
    with pytest.raises(PluginError, match="position 9 is beyond this model"):
        CMixup(position=9).setup(ctx)


# --------------------------------------------------------------------------------------------- end to end
@pytest.mark.skipif(not REAL_AIRFOIL.is_file(), reason="the real Airfoil file is not beside the repository")
def test_real_airfoil_end_to_end_cli(tmp_path):
    ds = {"name": "airfoil", "path": str(REAL_AIRFOIL)}
    res = run_cli(tmp_path, ds, epochs=5, methods=["erm", {"name": "cmixup", "sigma": 1.75, "position": 1}],
                  widths=(128, 128))
    assert res.exit_code == 0, res.output
    runs = pd.read_parquet(tmp_path / "out" / "runs")
    assert set(runs["method"]) == {"erm", "cmixup"} and (runs["status"] == "finished").all()
    assert (runs["selection"] == "best").all() and (runs["best_on"] == "val").all()
    assert runs["best_test_rmse"].between(1, 6.4).all()      # dB; predicting the training mean scores 6.42
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "out"), "--format", "markdown"])
    assert res.exit_code == 0, res.output
    head = res.output.splitlines()[2]
    assert "rmse ↓" in head and "mape ↓" in head and "pearson_r ↑" in head and "worst_domain" not in head
