"""Feature-level and model-guided methods on models users already have (timm, torchvision ResNet / ViT,
nn.Sequential) through ``mixcli.mixing.adapt``: the wrapper shares the user's weights, its positions
recompose the model exactly, and each kind of method trains the user's parameters through it."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from mixcli.api import Model, PluginError
from mixcli.mixing import Mixer, adapt


def timm_resnet():
    import timm
    return timm.create_model("resnet18", pretrained=False, num_classes=5)


def timm_vit():
    import timm
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8,
                             depth=2)


def tv_resnet():
    return torchvision.models.resnet18(num_classes=5)


def tv_vit():
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=5)


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU(), nn.Linear(16, 5))


MODELS = {"timm_resnet": timm_resnet, "timm_vit": timm_vit, "tv_resnet": tv_resnet, "tv_vit": tv_vit, "mlp": mlp}


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_positions_recompose_the_model_and_share_its_weights(make):
    torch.manual_seed(0)
    net = make().eval()
    m = adapt(net)
    assert isinstance(m, Model) and adapt(m) is m
    assert {id(p) for p in m.parameters()} == {id(p) for p in net.parameters()}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = net(x)
        torch.testing.assert_close(m(x), want)
        for k in range(m.embed_position + 1):
            torch.testing.assert_close(m.forward_from(m.forward_to(x, k), k), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("make", [timm_resnet, tv_resnet], ids=["timm", "torchvision"])
def test_class_activation_of_cnns(make):
    m = adapt(make().eval())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, fmap, weight, bias = m.class_activation(x)
        torch.testing.assert_close(logits, m(x), atol=1e-5, rtol=1e-4)
    assert fmap.dim() == 4 and weight.shape == (5, fmap.shape[1])


@pytest.mark.parametrize("make", [timm_vit, tv_vit], ids=["timm", "torchvision"])
def test_class_attention_of_vits(make):
    m = adapt(make().eval())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, attn = m.class_attention(x)
        torch.testing.assert_close(logits, m(x), atol=1e-5, rtol=1e-4)
    assert attn.shape == (2, 4, 4) and (attn >= 0).all()
    assert (attn.sum((1, 2)) <= 1 + 1e-5).all()  # softmax weights over patches (class token excluded)


CASES = [("manifold_mixup", "tv_resnet", {}), ("manifold_mixup", "timm_vit", {}), ("manifold_mixup", "mlp", {}),
         ("alignmix", "timm_resnet", {"input_prob": 0.0, "size": 64}), ("snapmix", "tv_resnet", {}),
         ("transmix", "tv_vit", {}), ("transmix", "timm_vit", {}), ("puzzlemix", "tv_resnet", {"solver": "exact"}),
         ("automix", "tv_resnet", {})]


@pytest.mark.parametrize("method, model, opts", CASES, ids=[f"{a}-{b}" for a, b, _ in CASES])
def test_feature_level_methods_train_a_users_model(method, model, opts):
    torch.manual_seed(0)
    net = MODELS[model]()
    opts = dict(opts)
    side = opts.pop("size", 32)  # alignmix needs a last feature map of 2 x 2 or more
    x, y = torch.randn(4, 3, side, side), torch.tensor([0, 1, 2, 3])
    kw = {"mean": (0.0,) * 3, "std": (1.0,) * 3, "train": (x, y), "epochs": 1}
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    mixer = Mixer(method, net, 5, seed=0, optimizer=opt, **kw, **opts)  # (automix's heads follow the optimizer)
    mixer.start_epoch(1)
    before = [p.detach().clone() for p in net.parameters()]
    for _ in range(2):
        out = mixer(x, y)
        loss = mixer.loss(out)
        assert out.logits.shape == (4, 5) and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))


def test_a_module_without_stages_is_refused_naming_what_it_lacks():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 5, 3)

        def forward(self, x):
            return self.body(x).mean((2, 3))

    with pytest.raises(PluginError) as e:
        Mixer("manifold_mixup", Net(), 5)
    msg = str(e.value)
    assert "method 'manifold_mixup'" in msg and "Net is none of the models" in msg and "feature_info" in msg
    assert "\n" not in msg
    Mixer("mixup", Net(), 5)  # input-level methods take any module
    with pytest.raises(PluginError, match="no class-token attention"):
        Mixer("transmix", tv_resnet(), 5)(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
