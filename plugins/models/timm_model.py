"""Any timm backbone as a mixcli model, its stages taken from timm's feature API (no per-architecture code).

``model: {name: timm, arch: resnet50}`` builds ``timm.create_model(arch, num_classes=K, in_chans=C, ...)``
for the dataset's channels ``C`` and classes ``K``. Positions for feature-level methods follow
``net.feature_info`` (timm's list of the modules whose outputs are the network's feature levels):

- position ``k`` in 1..S-1: the raw output of feature module ``k`` (``feature_info[k - 1]["module"]``: a
  feature map (B, C, H, W) for CNNs, the token sequence (B, N, D) for ViTs);
- position ``S`` (``num_stages``): ``net.forward_features(x)``, the final feature map that the head pools
  (the last feature module plus whatever timm runs after it, e.g. EfficientNet's ``conv_head``/``bn2`` or
  the ViT's final norm);
- position ``S + 1``: ``net.forward_head(..., pre_logits=True)``, the pooled embedding; ``classifier`` is
  ``net.get_classifier()``.

``forward_to(x, k)`` stops the forward right after feature module ``k`` (a forward hook). ``forward_from(h,
k)`` re-enters the forward there: timm models have no public "resume from level k" call, so it runs the model
with a hook that replaces feature module ``k``'s output by ``h``; the modules before it run on a zero input,
without gradients and in eval mode (no BatchNorm statistics are touched), so the result equals running the
rest of the network on ``h`` at the price of a gradient-free partial forward.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from mixcli.api import Model, PluginError, checkpoint_refusal
from mixcli.mixing.adapters import timm_class_attention, timm_forward_from, timm_forward_to, timm_last_attention
from mixcli.mixing.adapters import timm_patch_attention, timm_patch_tokens

def _timm():
    if importlib.util.find_spec("timm") is None:
        raise PluginError('the timm model needs the timm package: pip install "timm>=1.0"')
    import timm
    return timm


def load_weights(net: nn.Module, path: str) -> None:
    """Load a local state dict into ``net``: ``.safetensors`` files with safetensors, anything else with
    ``torch.load(weights_only=True)`` (a plain state dict, or a mixcli checkpoint's ``model`` entry, whose keys
    carry the ``net.`` prefix of this plugin). The classifier is skipped when its shape differs (a backbone
    trained for another number of classes); any other mismatch is an error naming the keys."""
    p = Path(path).expanduser()
    sd = read_state(p)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise PluginError(f"checkpoint: {p} holds a {type(sd).__name__}, expected a state dict")
    sd = {k[4:] if k.startswith("net.") else k: v for k, v in sd.items()}
    own = net.state_dict()
    head = {n for n, _ in net.get_classifier().named_parameters(prefix=_classifier_name(net))}
    sd = {k: v for k, v in sd.items() if not (k in head and k in own and own[k].shape != v.shape)}
    missing = [k for k in own if k not in sd and k not in head]
    unexpected = [k for k in sd if k not in own]
    bad = [k for k in sd if k in own and own[k].shape != sd[k].shape]
    if missing or unexpected or bad:
        parts = [f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad)) if keys]
        raise PluginError(f"checkpoint {p} does not fit this architecture ({'; '.join(parts)})")
    net.load_state_dict(sd, strict=False)


def read_state(p: Path, mmap: bool = False):
    """What a local checkpoint holds: ``.safetensors`` with safetensors, anything else with
    ``torch.load(weights_only=True)`` (``mmap``: without reading the tensors, to check the file); a file that
    is missing, unreadable or not weights-only is a one-line PluginError."""
    if not p.is_file():
        raise PluginError(f"checkpoint: no such file: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(p))
        try:
            return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:  # an old (non-zip) torch.save file cannot be memory-mapped
            if not mmap or "mmap" not in str(exc):
                raise
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
        fix = "save the weights alone, torch.save(model.state_dict(), PATH), or as a .safetensors file"
        raise PluginError("checkpoint: " + checkpoint_refusal(p, exc, fix)) from None


def _classifier_name(net: nn.Module) -> str:
    head = net.get_classifier()
    for name, mod in net.named_modules():
        if mod is head:
            return name
    return ""


class TimmModel(Model):
    """Any timm backbone (arch); list them: python -c "import timm; print(timm.list_models('resnet*'))".

    The feature levels of timm's feature API are the stages (see the module docstring).

    Wightman, "PyTorch Image Models" (timm), https://github.com/huggingface/pytorch-image-models. Options:
    ``arch`` (resnet18), ``pretrained`` (false: timm downloads its weights when true, which needs a network),
    ``checkpoint`` (a local ``.safetensors`` file or a ``weights_only`` state dict; a classifier of another
    size is left freshly initialised), ``small_stem`` (false: for CNNs whose stem downsamples (ResNet's
    stride-2 7x7 conv and max-pool), a 3x3 stride-1 convolution and no max-pool instead, the CIFAR variant;
    only for timm's ResNet family, found through its ``conv1``/``maxpool``), the common timm keywords
    ``img_size``, ``patch_size`` (ViTs: e.g. ``img_size: 32, patch_size: 4`` on CIFAR), ``drop_rate``,
    ``drop_path_rate`` (null: the architecture's default), and ``timm_args``: any other keyword arguments of
    ``timm.create_model`` (e.g. ``{embed_dim: 192, depth: 6, num_heads: 3}``). An option the architecture
    does not take is a one-line error.
    """

    paper = "Wightman, PyTorch Image Models (timm), 2019"

    def __init__(self, in_shape, out_dim, arch: str = "resnet18", pretrained: bool = False,
                 checkpoint: str | None = None, small_stem: bool = False, img_size: int | None = None,
                 patch_size: int | None = None, drop_rate: float | None = None, drop_path_rate: float | None = None,
                 timm_args: dict | None = None):
        super().__init__()
        if len(in_shape) != 3:
            raise PluginError(f"timm needs image inputs (C, H, W), got inputs of shape {tuple(in_shape)}")
        self.check_options(arch=arch, pretrained=pretrained, checkpoint=checkpoint, timm_args=timm_args)
        named = {"img_size": img_size, "patch_size": patch_size, "drop_rate": drop_rate,
                 "drop_path_rate": drop_path_rate}
        kwargs = {**{k: v for k, v in named.items() if v is not None}, **(timm_args or {})}
        timm = _timm()
        try:
            net = timm.create_model(arch, pretrained=bool(pretrained), num_classes=out_dim,
                                    in_chans=int(in_shape[0]), **kwargs)
        except TypeError as exc:
            raise PluginError(f"arch {arch}: an option it does not take ({str(exc).splitlines()[0][:200]})") from None
        except Exception as exc:  # noqa: BLE001 - e.g. no network for pretrained weights
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            hint = " (pretrained weights need a network; or use checkpoint: PATH)" if pretrained else ""
            raise PluginError(f"arch {arch}: timm could not build it: {type(exc).__name__}: {first}{hint}") from None
        if small_stem:
            _small_stem(net, arch, int(in_shape[0]))
        if checkpoint:
            load_weights(net, checkpoint)
        self.net = net
        self.arch = arch
        self._in_shape = tuple(int(v) for v in in_shape)
        info = getattr(net, "feature_info", None)
        if not info or not hasattr(net, "forward_features") or not hasattr(net, "forward_head"):
            raise PluginError(f"arch {arch} exposes no timm feature_info / forward_head; feature-level "
                              "methods cannot address its stages")
        mods = dict(net.named_modules())
        # timm's feature levels, in forward order: positions 1..S-1 are the first S-1 of them, position S is
        # forward_features (which ends with the last)
        self._names = [f["module"] for f in info if f["module"] in mods]
        if not self._names:
            raise PluginError(f"arch {arch}: its feature_info names no submodule")
        self.classifier = net.get_classifier()
        self._check_forward(in_shape)

    def _check_forward(self, in_shape) -> None:
        was = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                self.net(torch.zeros(2, *in_shape))
        except Exception as exc:  # noqa: BLE001 - e.g. an 8x8 image through a stride-32 stem
            raise PluginError(f"arch {self.arch} cannot run on {'x'.join(map(str, in_shape))} inputs "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); for small images "
                              "try small_stem: true (ResNets) or img_size/patch_size (ViTs)") from None
        finally:
            self.net.train(was)

    @classmethod
    def check_options(cls, arch="resnet18", pretrained=False, checkpoint=None, timm_args=None, **_) -> None:
        """What can be checked before the data is known: the architecture exists, ``timm_args`` is a mapping
        that does not set what mixcli sets, not both ``pretrained`` and ``checkpoint``, the checkpoint exists."""
        timm = _timm()
        if not isinstance(arch, str) or not timm.is_model(arch):
            close = timm.list_models(f"*{arch}*")[:5] if isinstance(arch, str) else []
            hint = f" (similar: {', '.join(close)})" if close else ""
            raise PluginError(f"arch {arch!r} is not a timm architecture{hint}; "
                              "see python -c \"import timm; print(timm.list_models())\"")
        if timm_args is not None and not isinstance(timm_args, dict):
            raise PluginError(f"timm_args must be a mapping of timm.create_model keywords, got {timm_args!r}")
        clash = sorted({"num_classes", "in_chans", "pretrained"} & set(timm_args or {}))
        if clash:
            raise PluginError(f"timm_args: {clash[0]} is set by mixcli (from the dataset / the pretrained option)")
        if pretrained and checkpoint:
            raise PluginError("set either pretrained or checkpoint, not both")
        if checkpoint:  # read as the run reads it (weights_only), so that validate refuses what run would
            read_state(Path(checkpoint).expanduser(), mmap=True)

    # -------------------------------------------------------------------------------- positions
    @property
    def num_stages(self) -> int:
        return len(self._names)

    @property
    def embed_position(self) -> int:
        return self.num_stages + 1

    @property
    def stages(self) -> "_Stages":
        """The feature-level modules; assigning an entry (``train.compile``) replaces it inside ``net``."""
        return _Stages(self.net, self._names)

    def _level(self, position: int) -> nn.Module:
        return self.net.get_submodule(self._names[position - 1])

    def forward_to(self, x: torch.Tensor, position: int) -> torch.Tensor:
        return timm_forward_to(self.net, self._level, self.num_stages, x, position)

    def forward_from(self, h: torch.Tensor, position: int) -> torch.Tensor:
        return timm_forward_from(self.net, self._level, self.num_stages, self.classifier, h, position,
                                 self._in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # -------------------------------------------------------------------------------- method hooks
    def class_attention(self, x: torch.Tensor):
        """(logits, attention): see :meth:`mixcli.api.Model.class_attention`. Found generically: the last
        block's attention module with timm's ``fused_attn`` switch and an ``attn_drop`` submodule (timm's
        ``Attention``); it runs unfused for this call and the softmaxed weights are read at ``attn_drop``
        (:func:`mixcli.mixing.adapters.timm_class_attention`)."""
        return timm_class_attention(self.net, x, f"arch {self.arch} has no class-token attention (a timm ViT "
                                    "with a class token is needed, e.g. vit_tiny_patch16_224 with "
                                    "img_size/patch_size)")

    def _last_attention(self):
        return timm_last_attention(self.net)

    def patch_tokens(self, x: torch.Tensor):
        """(logits, tokens): see :meth:`mixcli.api.Model.patch_tokens`; the patch tokens of
        ``forward_features`` (after the final norm), (B, Hp, Wp, D), and the logits of the same forward
        (:func:`mixcli.mixing.adapters.timm_patch_tokens`)."""
        return timm_patch_tokens(self.net, x, f"arch {self.arch} has no patch tokens (a timm ViT is needed, "
                                 "e.g. vit_tiny_patch16_224 with img_size/patch_size)")

    def patch_attention(self, x: torch.Tensor):
        """(logits, attention): see :meth:`mixcli.api.Model.patch_attention`; read like
        :meth:`class_attention` (:func:`mixcli.mixing.adapters.timm_patch_attention`)."""
        return timm_patch_attention(self.net, x, f"arch {self.arch} has no patch attention (a timm ViT is "
                                    "needed, e.g. vit_tiny_patch16_224 with img_size/patch_size)")


class _Stages:
    """A timm model's feature-level modules by name, indexable like ``Model.stages``."""

    def __init__(self, net: nn.Module, names: list[str]):
        self.net, self.names = net, names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> nn.Module:
        return self.net.get_submodule(self.names[i])

    def __setitem__(self, i: int, module: nn.Module) -> None:
        self.net.set_submodule(self.names[i], module)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _small_stem(net: nn.Module, arch: str, c: int) -> None:
    """The CIFAR stem: ``conv1`` -> 3x3 stride 1 (same width), ``maxpool`` -> identity."""
    conv, pool = getattr(net, "conv1", None), getattr(net, "maxpool", None)
    if not isinstance(conv, nn.Conv2d) or pool is None:
        raise PluginError(f"small_stem: arch {arch} has no single conv1 + maxpool stem (it is for timm's "
                          "ResNet family; other CNNs choose their stem through their own options)")
    net.conv1 = nn.Conv2d(c, conv.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    for f in net.feature_info:  # timm's reductions of the later levels shrink by 4
        f["reduction"] = max(1, f["reduction"] // 4)
