"""Label noise as a dataset option (issue 25): the generators, the option's validation, the run id, the
clean labels kept, and the label_noise evaluator's memorisation metrics."""
from __future__ import annotations

import glob
from math import inf

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mixcli.api import DataBundle, PluginError, Split
from mixcli.data import noise
from mixcli_plugins.evaluators.label_noise import memorisation

K = 10


def _labels(n=20000, k=K, seed=0):
    return np.random.default_rng(seed).integers(0, k, n)


# ------------------------------------------------------------------------------------------- symmetric
def test_symmetric_over_all_classes_resamples_rate_of_the_labels_uniformly():
    y = _labels()
    yn = noise.symmetric(y, K, 0.4, seed=3, over="all")
    changed = yn != y
    # a resampled label keeps its class with probability 1/K: realised rate ~ 0.4 * 9/10
    assert abs(changed.mean() - 0.36) < 0.015
    counts = np.bincount(yn[changed], minlength=K) / changed.sum()
    assert np.abs(counts - 1 / K).max() < 0.02
    assert np.array_equal(yn, noise.symmetric(y, K, 0.4, seed=3, over="all"))     # fixed by its seed
    assert not np.array_equal(yn, noise.symmetric(y, K, 0.4, seed=4, over="all"))


def test_symmetric_over_others_never_draws_the_true_class():
    y = _labels()
    yn = noise.symmetric(y, K, 0.4, seed=0, over="others")
    changed = yn != y
    assert abs(changed.mean() - 0.4) < 0.015
    # the new label is uniform over the 9 other classes: (new - y) mod K uniform on 1..9
    off = ((yn - y) % K)[changed]
    assert off.min() >= 1
    assert np.abs(np.bincount(off, minlength=K)[1:] / changed.sum() - 1 / 9).max() < 0.02
    assert np.array_equal(noise.symmetric(y, K, 0.0, 0, "others"), y)
    assert (noise.symmetric(y, K, 1.0, 0, "others") != y).all()


# ------------------------------------------------------------------------------------------ asymmetric
def test_cifar10_pairs_are_the_class_pair_convention():
    t = noise.transition("cifar10", 10)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    got = {names[a]: names[b] for a, b in enumerate(t) if a != b}
    assert got == {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
    y = _labels()
    yn = noise.asymmetric(y, 10, 0.4, seed=1, pairs="cifar10")
    paired = np.isin(y, [9, 2, 4, 3, 5])
    assert (yn[~paired] == y[~paired]).all()
    assert (yn[yn != y] == t[y[yn != y]]).all()
    assert abs((yn != y)[paired].mean() - 0.4) < 0.02


def test_cifar100_pairs_stay_within_the_official_superclasses():
    coarse = np.asarray(noise.CIFAR100_COARSE)
    assert len(coarse) == 100 and (np.bincount(coarse, minlength=20) == 5).all()
    # spot checks against CIFAR-100's meta file: apple (0) is fruit_and_vegetables (4), beaver (4) an
    # aquatic mammal (0), bicycle (8) vehicles 1 (18), whale (95) an aquatic mammal (0)
    assert (coarse[0], coarse[4], coarse[8], coarse[95]) == (4, 0, 18, 0)
    t = noise.transition("cifar100", 100)
    assert (coarse[t] == coarse).all() and (t != np.arange(100)).all()
    assert sorted(t) == list(range(100))                   # a permutation: five-cycles
    members = np.flatnonzero(coarse == 0)                  # aquatic mammals in id order, each to the next
    assert list(t[members]) == list(members[1:]) + [members[0]]
    blocks = noise.transition("cifar100_blocks", 100)
    assert list(blocks[:6]) == [1, 2, 3, 4, 0, 6]
    assert list(noise.transition("next", 7)) == [1, 2, 3, 4, 5, 6, 0]


# -------------------------------------------------------------------------------------------- instance
def _reference_instance(n_rate, xs, labels, num_classes, feature_size, norm_std, seed):
    """xiaoboxia/Part-dependent-label-noise tools.get_instance_noisy_label, on the CPU (no .cuda())."""
    from scipy import stats

    np.random.seed(int(seed))
    torch.manual_seed(int(seed))
    P = []
    flip_distribution = stats.truncnorm((0 - n_rate) / norm_std, (1 - n_rate) / norm_std, loc=n_rate,
                                        scale=norm_std)
    flip_rate = flip_distribution.rvs(labels.shape[0])
    W = np.random.randn(num_classes, feature_size, num_classes)
    W = torch.FloatTensor(W)
    for i, (x, y) in enumerate(zip(xs, labels)):
        A = x.view(1, -1).mm(W[y]).squeeze(0)
        A[y] = -inf
        A = flip_rate[i] * F.softmax(A, dim=0)
        A[y] += 1 - flip_rate[i]
        P.append(A)
    P = torch.stack(P, 0).cpu().numpy()
    return np.array([np.random.choice(list(range(num_classes)), p=P[i]) for i in range(labels.shape[0])])


def test_instance_noise_equals_the_part_dependent_reference_generator():
    g = torch.Generator().manual_seed(0)
    n, k = 400, 5
    x = torch.randint(0, 256, (n, 1, 3, 2), generator=g, dtype=torch.uint8)   # raw pixels, as the reference
    y = torch.randint(0, k, (n,), generator=g)
    ours = noise.instance(x, y.numpy(), k, 0.3, seed=7, norm_std=0.1)
    ref = _reference_instance(0.3, x.float(), y, k, 6, 0.1, 7)
    assert (ours == ref).mean() >= 0.995  # equal up to float32 rounding of the per-row products
    assert abs((ours != y.numpy()).mean() - 0.3) < 0.08


def test_instance_noise_rate_follows_the_flip_rate():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5000, 20, generator=g)
    y = torch.randint(0, K, (5000,), generator=g)
    for rate in (0.2, 0.4):
        yn = noise.instance(x, y.numpy(), K, rate, seed=0)
        assert abs((yn != y.numpy()).mean() - rate) < 0.02


# ------------------------------------------------------------------------------------- bundle, option
def test_only_the_training_split_is_corrupted_and_the_clean_labels_are_kept():
    g = torch.Generator().manual_seed(0)
    split = lambda n: Split(torch.rand(n, 4, generator=g), torch.randint(0, K, (n,), generator=g))  # noqa: E731
    data = DataBundle("classification", split(3000), split(500), val=split(300), num_classes=K)
    test_y, val_y, train_y = data.test.y.clone(), data.val.y.clone(), data.train.y.clone()
    spec = noise.check_label_noise({"kind": "symmetric", "rate": 0.5, "over": "others"}, "digits")
    out = noise.apply_label_noise(data, spec)
    assert torch.equal(out.test.y, test_y) and torch.equal(out.val.y, val_y)
    assert out.test.y_clean is None and torch.equal(out.train.y_clean, train_y)
    assert abs(noise.noise_rate(out.train) - 0.5) < 0.04
    sub = out.train.subset([3, 1])  # the clean labels follow subsets and device moves
    assert torch.equal(sub.y_clean, train_y[[3, 1]]) and torch.equal(out.train.to("cpu").y_clean, train_y)


@pytest.mark.parametrize("value, message", [
    ({"kind": "symmetric", "rate": 1.5}, "rate must be a number in [0, 1], got 1.5"),
    ({"kind": "symmetric"}, "needs 'rate'"),
    ({"kind": "pair", "rate": 0.2}, "kind must be one of symmetric, asymmetric, instance"),
    ({"kind": "symmetric", "rate": 0.2, "pairs": "next"}, "unknown key 'pairs' for kind symmetric"),
    ({"kind": "asymmetric", "rate": 0.2, "pairs": "x"}, "pairs must be one of"),
    ({"kind": "instance", "rate": 0.2, "norm_std": 0}, "norm_std must be a number > 0"),
    ({"kind": "symmetric", "rate": 0.2, "seed": -1}, "seed must be an integer"),
    (0.4, "expected a mapping"),
])
def test_bad_options_say_what_is_expected(value, message):
    with pytest.raises(PluginError, match=None) as exc:
        noise.check_label_noise(value, "digits")
    assert message in str(exc.value)


def test_defaults_are_completed_and_auto_pairs_follow_the_dataset():
    c = noise.check_label_noise
    assert c({"kind": "symmetric", "rate": 0.4}, "x") == {"kind": "symmetric", "rate": 0.4, "seed": 0, "over": "all"}
    assert c({"kind": "asymmetric", "rate": 0.4}, "cifar10")["pairs"] == "cifar10"
    assert c({"kind": "asymmetric", "rate": 0.4}, "cifar100")["pairs"] == "cifar100"
    assert c({"kind": "asymmetric", "rate": 0.4}, "digits")["pairs"] == "next"
    with pytest.raises(PluginError, match="defined for 100 classes"):
        noise.check_classes({"pairs": "cifar100"}, 10)


# ----------------------------------------------------------------------------------------- through cli
EXP = """\
name: ln
dataset: {{name: digits, fraction: 0.3{noise}}}
model: {{name: mlp, widths: [16]}}
method: erm
train: {{epochs: 2, batch_size: 64, optimizer: {{name: sgd, lr: 0.05}}}}
{extra}
"""


def _exp(noise_text="", extra=""):
    return EXP.format(noise=noise_text, extra=extra)


@pytest.mark.parametrize("noise_text, extra, message", [
    (", label_noise: {kind: symmetric, rate: 2}", "", "dataset.label_noise: rate must be a number in [0, 1]"),
    (", label_noise: {kind: asymmetric, rate: 0.2, pairs: cifar100}", "",
     "dataset.label_noise: pairs: cifar100 is defined for 100 classes"),
    ("", "eval: {extra: [label_noise]}", "give the dataset a label_noise option"),
])
def test_validate_refuses_in_one_line(cli, write, noise_text, extra, message):
    code, out = cli("validate", write(_exp(noise_text, extra)))
    assert code == 2 and message in out
    assert len(out.strip().splitlines()) == 1 and "Traceback" not in out


def test_validate_refuses_label_noise_on_a_regression_dataset(cli, write):
    p = write("name: r\ntask: regression\ndataset: {name: airfoil, label_noise: {kind: symmetric, rate: 0.2}}\n"
              "model: {name: mlp, widths: [8]}\n")
    code, out = cli("validate", p)
    assert code == 2 and "airfoil' is a regression dataset" in out and len(out.strip().splitlines()) == 1


def test_the_noise_is_part_of_the_run_id():
    from mixcli.config.jobs import expand
    from mixcli.config.spec import load_experiment
    import tempfile, os  # noqa: E401

    ids = []
    with tempfile.TemporaryDirectory() as d:
        for text in ("", ", label_noise: {kind: symmetric, rate: 0.4}",
                     ", label_noise: {kind: symmetric, rate: 0.4, seed: 0, over: all}",
                     ", label_noise: {kind: symmetric, rate: 0.4, seed: 1}",
                     ", label_noise: {kind: symmetric, rate: 0.2}"):
            p = os.path.join(d, "e.yaml")
            open(p, "w").write(_exp(text))
            (job,) = expand(load_experiment(p))
            ids.append(job.run_id)
            if not text:
                assert "label_noise" not in job.config["dataset"]  # runs without noise keep their ids
    assert ids[1] == ids[2]                                   # defaults written out or not: one run
    assert len({ids[0], ids[1], ids[3], ids[4]}) == 4


def test_a_noisy_run_reports_the_noise_rate_and_memorisation(cli, write, tmp_path):
    p = write(_exp(", label_noise: {kind: symmetric, rate: 0.4, seed: 2}",
                   "eval: {extra: [label_noise], extra_every: 1}"))
    code, out = cli("run", p, "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0, out
    e = pd.concat(pd.read_parquet(f) for f in glob.glob(str(tmp_path / "o/epochs/**/*.parquet"), recursive=True))
    assert len(e) == 2 and e["test_noise_rate"].notna().all()
    # the realised rate equals the generator's on the same training labels (digits, fraction 0.3)
    from mixcli_plugins.datasets.digits import Digits
    train = Digits(fraction=0.3).load().train
    want = (noise.symmetric(train.y.numpy(), 10, 0.4, 2, "all") != train.y.numpy()).mean()
    assert e["test_noise_rate"].iloc[0] == pytest.approx(want)
    for col in ("test_noisy_memorized", "test_noisy_predicted_clean", "test_clean_train_accuracy"):
        assert e[col].between(0, 1).all()
    assert (e["test_noisy_memorized"] + e["test_noisy_predicted_clean"] <= 1 + 1e-9).all()


def test_memorisation_counts():
    y_clean = torch.tensor([0, 1, 2, 3, 4, 5])
    y = torch.tensor([0, 1, 2, 9, 8, 7])           # the last three corrupted
    pred = torch.tensor([0, 1, 5, 9, 4, 0])        # memorises one, recovers one, neither for the third
    m = memorisation(pred, y, y_clean)
    assert m == {"noise_rate": 0.5, "noisy_memorized": pytest.approx(1 / 3),
                 "noisy_predicted_clean": pytest.approx(1 / 3), "clean_train_accuracy": pytest.approx(2 / 3)}


def test_the_noisy_label_experiments_validate_and_the_cpu_one_runs(cli, tmp_path):
    from pathlib import Path
    root = Path(__file__).resolve().parents[2] / "experiments"
    for name in ("noisy_labels_digits.yaml", "noisy_labels_cifar10.yaml"):
        code, out = cli("validate", root / name)
        assert code == 0, out
    code, out = cli("run", root / "noisy_labels_digits.yaml", "--set", "train.epochs=2", "--set", "seeds=1",
                    "--set", "eval.extra_every=1", "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0, out
    runs = pd.concat(pd.read_parquet(f) for f in glob.glob(str(tmp_path / "o/runs/**/*.parquet"), recursive=True))
    assert sorted(runs["method"]) == ["erm", "mdyr", "mixup"] and (runs["status"] == "finished").all()
    assert runs["final_test_noisy_memorized"].notna().all()
