"""SUMix: the loss against a port of the reference (JinXins/SUMix ``ClsUncertainMixupHead.IN_loss`` with
``is_norm=False``, and the clean forward of ``MixUpClassification`` with ``is_IN``), composition with mixing
methods through the engine and Mixer, errors, and runs on digits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixcli.api import Batch, Context, MixOutput, PluginError, Split, begin_step, permutation
from mixcli_plugins.losses.sumix import SUMix
from mixcli_plugins.models.cnn import CNN


def ref_l2_norm(x):
    buffer = torch.pow(x, 2)
    norm = torch.sqrt(torch.sum(buffer, 1))
    return torch.div(x, norm.view(-1, 1))


def ref_criterion(cls_score, label, avg_factor):
    """OpenMixup's ``CrossEntropyLoss`` (mean reduction with ``avg_factor``): a scalar."""
    return F.cross_entropy(cls_score, label, reduction="none").sum() / avg_factor


def ref_in_loss(cls_one, cls_mix, y_a, y_b, lam, rand_index, gama):
    """``IN_loss`` with ``is_norm=False`` (the uncertainty scores are the logits), lam a float."""
    uncertain_one, uncertain_mix = cls_one, cls_mix
    uncertain_one_ = uncertain_one[rand_index, ]
    avg_factor = y_a.size(0)
    sf = torch.nn.Softmax(dim=-1)
    semantic_one, semantic_mix = sf(cls_one.clone().detach()), sf(cls_mix.clone().detach())
    semantic_one_ = semantic_one[rand_index, ]
    for i in range(0, avg_factor):
        semantic_one[i, y_b[i]] = 0
        semantic_one_[i, y_a[i]] = 0
    alpha = ref_l2_norm(sf(semantic_mix - semantic_one)) * avg_factor
    alpha_ = ref_l2_norm(sf(semantic_mix - semantic_one_)) * avg_factor
    beta = uncertain_one + uncertain_mix
    beta_ = uncertain_one_ + uncertain_mix
    INa = torch.exp(-alpha)
    INb = torch.exp(-alpha_)
    INa_f = torch.exp(-(beta + alpha))
    INb_f = torch.exp(-(beta_ + alpha_))
    lam_a = torch.ones([avg_factor])
    lam_b = torch.ones([avg_factor])
    for i in range(INa.shape[0]):
        lam_a[i] = lam * INa[i, y_a[i]]
        lam_b[i] = (1 - lam) * INb[i, y_b[i]]
    lam_a = lam_a / (lam_a + lam_b)
    lam_b = (1 - lam_a)
    return torch.mean(ref_criterion(cls_mix, y_a, avg_factor) * lam_a
                      + ref_criterion(cls_mix, y_b, avg_factor) * lam_b) \
        + gama * (ref_criterion(INa_f, y_a, avg_factor) * lam + ref_criterion(INb_f, y_b, avg_factor) * (1 - lam))


class Linear(torch.nn.Module):
    def __init__(self, d, k, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = torch.nn.Linear(d, k)

    def forward(self, x):
        return self.fc(x.flatten(1))


def setting(seed, n=8, k=5, d=12):
    g = torch.Generator().manual_seed(seed)
    x, xm = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    model = Linear(d, k, seed)
    ctx = Context(task="classification", num_classes=k, device=torch.device("cpu"), rng=np.random.default_rng(seed),
                  train=Split(x, y), fetch=None, epochs=1, model=model)
    begin_step(ctx, Batch(x, y, torch.arange(n)))
    perm = permutation(ctx, n)
    return model, ctx, x, xm, y, perm


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lam", [0.3, 0.81])
def test_matches_the_reference_in_value_and_gradient(seed, lam):
    model, ctx, x, xm, y, perm = setting(seed)
    z_mix = model(xm)
    out = MixOutput(z_mix, y, y[perm], torch.full((len(y),), lam))
    ours = SUMix(gamma=0.5)(out, ctx)
    g_ours = torch.autograd.grad(ours, list(model.parameters()))
    ref = ref_in_loss(model(x), model(xm), y, y[perm], lam, perm, 0.5)
    g_ref = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(ours, ref)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b)


def test_per_sample_reduction_pairs_each_row_with_its_weights():
    model, ctx, x, xm, y, perm = setting(0)
    out = MixOutput(model(xm), y, y[perm], torch.full((len(y),), 0.6))
    from mixcli_plugins.losses.sumix import sumix_terms
    z1, z2 = model(x), out.logits
    la, lb, fa, fb = sumix_terms(z1, z2, z1, z2, y, y[perm], perm, out.lam)
    ce = lambda z, t: F.cross_entropy(z, t, reduction="none")  # noqa: E731
    want = (ce(z2, y) * la + ce(z2, y[perm]) * lb).mean() + 0.1 * (ce(fa, y) * 0.6 + ce(fb, y[perm]) * 0.4).mean()
    torch.testing.assert_close(SUMix(gamma=0.1, reduction="per_sample")(out, ctx), want)
    assert torch.allclose(la + lb, torch.ones_like(la)) and ((la >= 0) & (la <= 1)).all()


def test_an_unmixed_batch_gets_the_plain_cross_entropy():
    model, ctx, x, xm, y, perm = setting(1)
    out = MixOutput.unmixed(model(x), y)
    torch.testing.assert_close(SUMix()(out, ctx), F.cross_entropy(model(x), y))


def test_a_method_that_records_no_partners_is_one_line_error():
    model, ctx, x, xm, y, perm = setting(2)
    begin_step(ctx, Batch(x, y, torch.arange(len(y))))  # a new step: nothing drawn
    out = MixOutput(model(xm), y, y.flip(0), torch.full((len(y),), 0.5))
    with pytest.raises(PluginError, match="partners") as e:
        SUMix()(out, ctx)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("opts,words", [({"gamma": -1}, "gamma"), ({"uncertainty": "head"}, "not implemented"),
                                        ({"uncertainty": "x"}, "uncertainty"), ({"reduction": "sum"}, "reduction")])
def test_bad_options_are_one_line_errors(opts, words):
    with pytest.raises(PluginError, match=words) as e:
        SUMix(**opts)
    assert "\n" not in str(e.value)


def test_composes_with_cutmix_in_mixer_and_the_partners_are_the_methods():
    """Through ``Mixer``: the loss sees cutmix's own partners (y_b = y[partners]) and the clean batch."""
    from mixcli.mixing import Mixer
    torch.manual_seed(0)
    model = CNN((1, 8, 8), 4, width=4)
    mixer = Mixer("cutmix", model, num_classes=4, seed=0, loss="sumix")
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 4
    out = mixer(x, y)
    perm = mixer.ctx.extra["partners"]
    assert torch.equal(out.y_b, y[perm]) and mixer.ctx.extra["batch"].x is x
    loss = mixer.loss(out)
    assert torch.isfinite(loss) and loss.requires_grad


def test_validate_and_runs_with_several_methods_on_digits(cli, write, tmp_path):
    p = write(f"""\
    name: su
    dataset: {{name: digits, fraction: 0.1}}
    model: {{name: cnn, width: 4}}
    method: cutmix
    loss: {{name: sumix, gamma: 0.5}}
    train: {{epochs: 1, batch_size: 32, optimizer: {{name: sgd, lr: 0.05}}}}
    seeds: [0]
    grid:
      method: [{{name: cutmix, alpha: 0.2}}, {{name: mixup, alpha: 1.0}}, resizemix]
    out: {tmp_path / 'out'}
    """)
    assert cli("validate", p)[0] == 0
    code, text = cli("run", p, "--device", "cpu")
    assert code == 0, text
    import pandas as pd
    assert sorted(pd.read_parquet(tmp_path / "out" / "runs")["status"]) == ["finished"] * 3
    code, text = cli("validate", p, "--set", "loss={name: sumix, uncertainty: head}")
    assert code == 2 and "not implemented" in text and "Traceback" not in text


def test_composes_with_tokenmix_normalized_labels_on_a_vit():
    """The ViT mixers record their partners too: sumix on tokenmix's normalized labels."""
    from mixcli.mixing import Mixer
    from mixcli_plugins.models.timm_model import TimmModel
    torch.manual_seed(0)
    model = TimmModel((1, 8, 8), 4, arch="vit_tiny_patch16_224", img_size=8, patch_size=2,
                      timm_args={"depth": 1, "embed_dim": 16, "num_heads": 2})
    mixer = Mixer("tokenmix", model, num_classes=4, seed=0, loss="sumix", switch_prob=1.0, labels="normalized")
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 4
    out = mixer(x, y)
    assert torch.equal(out.y_b, y[mixer.ctx.extra["partners"]])
    loss = mixer.loss(out)
    assert torch.isfinite(loss) and loss.requires_grad


def test_partners_from_the_dataset_are_not_taken_for_batch_rows():
    """mixup with partners: dataset mixes with training examples outside the batch: sumix refuses it."""
    from mixcli.mixing import Mixer
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 4
    mixer = Mixer("mixup", CNN((1, 8, 8), 4, width=4), num_classes=4, seed=0, loss="sumix", partners="dataset",
                  train=Split(x, y))
    out = mixer(x[:8], y[:8], index=torch.arange(8))
    with pytest.raises(PluginError, match="partners"):
        mixer.loss(out)
