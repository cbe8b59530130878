"""Models users already have, as the :class:`mixcli.api.Model` that feature-level and model-guided methods
address: :func:`adapt` wraps a timm model, a torchvision ResNet or VisionTransformer, or an
``nn.Sequential`` whose last layer is the classifier; a :class:`~mixcli.api.Model` is returned as it is.

The wrapper shares the user's modules (no copy: the user's optimizer trains what the method runs), and its
``forward`` is the user's ``forward``. Positions (see :class:`mixcli.api.Model`): ``0`` the input, ``1..S``
the stage outputs, ``S + 1`` the pooled embedding before the classifier.

- timm (any model with ``feature_info``, ``forward_features``, ``forward_head``, ``get_classifier``, as
  the ``timm`` model plugin): position ``k < S`` is the output of feature module ``k`` of ``feature_info``,
  ``S`` is ``forward_features``, ``S + 1`` is ``forward_head(pre_logits=True)``. Resuming at ``k < S``
  runs the modules before it on a zero input without gradients (timm has no "forward from level k").
- torchvision ResNet: stages = (stem: conv1 bn1 relu maxpool), layer1..layer4; pool = avgpool + flatten;
  classifier = fc.
- torchvision VisionTransformer: stages = (embedding: patches, class token, position embedding, dropout),
  then each encoder layer; pool = encoder.ln + the class token; classifier = heads. ``class_attention``
  (TransMix) reads the last layer's head-averaged attention.
- ``nn.Sequential``: stages = every module but the last, pool = identity, classifier = the last module.

Anything else is refused with one line naming what it lacks.
"""
from __future__ import annotations

import torch
from torch import nn

from ..api import Model, PluginError

__all__ = ["adapt", "TimmAdapter", "ResNetAdapter", "ViTAdapter", "SequentialAdapter", "MODEL_NEEDS"]

#: the :attr:`mixcli.api.Method.needs` that require a model with positions or hooks
MODEL_NEEDS = frozenset({"stages", "class_activation", "class_attention", "patch_tokens", "patch_attention"})

_RESNET = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")
_VIT = ("conv_proj", "class_token", "encoder", "heads", "_process_input")
_TIMM = ("feature_info", "forward_features", "forward_head", "get_classifier")


def adapt(model: nn.Module, method: str = "this method") -> Model:
    """``model`` as a :class:`mixcli.api.Model` (itself when it is one). ``method`` names the method in the
    error raised for a module no adapter fits."""
    if isinstance(model, Model):
        return model
    if not isinstance(model, nn.Module):
        raise PluginError(f"{method} needs the model as a torch.nn.Module, got {type(model).__name__}")
    if all(hasattr(model, a) for a in _TIMM) and getattr(model, "feature_info", None):
        return TimmAdapter(model)
    if all(hasattr(model, a) for a in _RESNET):
        return ResNetAdapter(model)
    if all(hasattr(model, a) for a in _VIT) and hasattr(model.encoder, "layers"):
        return ViTAdapter(model)
    if isinstance(model, nn.Sequential) and len(model) >= 2:
        return SequentialAdapter(model)
    raise PluginError(
        f"{method} runs the model stage by stage, and {type(model).__name__} is none of the models mixcli can "
        "split: a mixcli.api.Model (stages, pool, classifier), a timm model (feature_info, forward_features, "
        "forward_head), a torchvision ResNet (conv1 ... layer4, avgpool, fc) or VisionTransformer, or an "
        "nn.Sequential ending with its classifier; give it stages / pool / classifier by subclassing "
        "mixcli.api.Model, or use an input-level method (mixup, cutmix, ...)")


class _Wrapped(Model):
    """A user's module behind the Model interface: ``forward`` is the module's own."""

    def __init__(self, net: nn.Module) -> None:
        nn.Module.__init__(self)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SequentialAdapter(_Wrapped):
    def __init__(self, net: nn.Sequential) -> None:
        super().__init__(net)
        self.stages = nn.ModuleList(list(net)[:-1])
        self.pool = nn.Identity()
        self.classifier = net[-1]


class _Stem(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool

    def forward(self, x):
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


class ResNetAdapter(_Wrapped):
    def __init__(self, net: nn.Module) -> None:
        super().__init__(net)
        self.stages = nn.ModuleList([_Stem(net), net.layer1, net.layer2, net.layer3, net.layer4])
        self.pool = nn.Sequential(net.avgpool, nn.Flatten(1))
        self.classifier = net.fc


class _ViTEmbed(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = [net]  # not a submodule (its parameters are the wrapper's already)

    def forward(self, x):
        net = self.net[0]
        x = net._process_input(x)
        x = torch.cat([net.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return net.encoder.dropout(x + net.encoder.pos_embedding)


class _ClassToken(nn.Module):
    def __init__(self, ln: nn.Module) -> None:
        super().__init__()
        self.ln = ln

    def forward(self, h):
        return self.ln(h)[:, 0]


class ViTAdapter(_Wrapped):
    def __init__(self, net: nn.Module) -> None:
        super().__init__(net)
        self.stages = nn.ModuleList([_ViTEmbed(net), *net.encoder.layers])
        self.pool = _ClassToken(net.encoder.ln)
        self.classifier = net.heads

    def class_attention(self, x: torch.Tensor):
        """(logits, attn): the last encoder layer's attention from the class token to the patches,
        averaged over heads (B, Hp, Wp), detached."""
        attn_mod = self.net.encoder.layers[-1].self_attention
        seen = []

        def ask(_m, args, kwargs):
            return args, {**kwargs, "need_weights": True, "average_attn_weights": True}

        def capture(_m, _args, out):
            seen.append(out[1])

        h1 = attn_mod.register_forward_pre_hook(ask, with_kwargs=True)
        h2 = attn_mod.register_forward_hook(capture)
        try:
            logits = self.net(x)
        finally:
            h1.remove()
            h2.remove()
        side = self.net.image_size // self.net.patch_size
        a = seen[-1].detach()[:, 0, 1:].float()
        return logits, a.reshape(a.shape[0], side, side)


class _Stop(Exception):
    """Ends a timm forward early (the capture hook of :func:`timm_forward_to`)."""


# ------------------------------------------------- timm's feature API, shared with the ``timm`` model plugin
def timm_forward_to(net: nn.Module, level, num_stages: int, x: torch.Tensor, position: int) -> torch.Tensor:
    """A timm model run from the input up to ``position``: the input (0), the output of feature level
    ``level(position)`` (1..S-1, read by a forward hook that stops the forward), ``forward_features`` (S) or
    the pooled pre-logits (S + 1)."""
    if position <= 0:
        return x
    if position >= num_stages:
        h = net.forward_features(x)
        return h if position == num_stages else net.forward_head(h, pre_logits=True)
    out = []

    def capture(_m, _i, o):
        out.append(o)
        raise _Stop

    handle = level(position).register_forward_hook(capture)
    try:
        net.forward_features(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return out[0]


def timm_forward_from(net: nn.Module, level, num_stages: int, classifier: nn.Module, h: torch.Tensor,
                      position: int, in_shape) -> torch.Tensor:
    """The rest of a timm model from ``h`` at ``position`` (see :func:`timm_forward_to`). An inner level is
    resumed by running ``forward_features`` on a zero input of ``in_shape`` (eval mode, no gradients) whose
    ``level(position)`` output a hook replaces by ``h``; from there on the network runs in its own mode, with
    gradients."""
    if position <= 0:
        return net(h)
    if position > num_stages:
        return classifier(h)
    if position == num_stages:
        return net.forward_head(h)
    if in_shape is None:
        raise PluginError("a timm model resumed at an inner level needs one forward first (its input shape)")
    flags = [(m, m.training) for m in net.modules()]
    grad = torch.is_grad_enabled()

    def replace(_m, _i, _o):
        for m, t in flags:  # the rest of the network runs in its own mode, with gradients
            m.training = t
        torch.set_grad_enabled(grad)
        return h

    handle = level(position).register_forward_hook(replace)
    net.eval()
    try:
        with torch.no_grad():
            z = torch.zeros(h.shape[0], *in_shape, device=h.device, dtype=h.dtype)
            feats = net.forward_features(z)
    finally:
        handle.remove()
        for m, t in flags:
            m.training = t
    return net.forward_head(feats)


def timm_last_attention(net: nn.Module):
    """The last attention module of a timm model (timm's ``Attention``: a ``fused_attn`` switch and an
    ``attn_drop`` submodule), or None."""
    found = None
    for m in net.modules():
        if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module):
            found = m
    return found


def timm_class_attention(net: nn.Module, x: torch.Tensor, missing: str):
    """(logits, attention) of a timm ViT with a class token: the last block's attention runs unfused for
    this call and its softmaxed weights are read at ``attn_drop``; class token -> patches, mean over heads,
    (B, Hp, Wp), detached. ``missing``: the error when ``net`` has no such attention."""
    attn_mod = timm_last_attention(net)
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    prefix = int(getattr(net, "num_prefix_tokens", 0))
    if attn_mod is None or grid is None or prefix < 1:
        raise PluginError(missing)
    seen = []

    def capture(_m, inp, _o):
        seen.append(inp[0])

    fused = attn_mod.fused_attn
    attn_mod.fused_attn = False
    handle = attn_mod.attn_drop.register_forward_hook(capture)
    try:
        logits = net(x)
    finally:
        handle.remove()
        attn_mod.fused_attn = fused
    a = seen[-1].detach()[:, :, 0, prefix:].float().mean(1)
    return logits, a.view(a.shape[0], *grid)


def _timm_attention_weights(net: nn.Module, x: torch.Tensor, missing: str):
    """(logits, weights, prefix, grid): ``net(x)`` with the last block's attention run unfused, its softmaxed
    weights (B, heads, T, T) read at ``attn_drop`` (detached), the number of prefix tokens and the patch grid."""
    attn_mod = timm_last_attention(net)
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    if attn_mod is None or grid is None:
        raise PluginError(missing)
    seen = []
    fused = attn_mod.fused_attn
    attn_mod.fused_attn = False
    handle = attn_mod.attn_drop.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0]))
    try:
        logits = net(x)
    finally:
        handle.remove()
        attn_mod.fused_attn = fused
    return logits, seen[-1].detach(), int(getattr(net, "num_prefix_tokens", 0)), tuple(grid)


def timm_patch_attention(net: nn.Module, x: torch.Tensor, missing: str):
    """(logits, attention) of a timm ViT: the last block's attention from the patch tokens to each patch
    token, mean over heads and query patches (prefix tokens left out), (B, Hp, Wp), detached (SMMix's
    ``attn[:, :, 1:, 1:].mean(dim=(1, 2))``)."""
    logits, w, prefix, grid = _timm_attention_weights(net, x, missing)
    a = w[:, :, prefix:, prefix:].float().mean((1, 2))
    return logits, a.view(a.shape[0], *grid)


def timm_patch_tokens(net: nn.Module, x: torch.Tensor, missing: str):
    """(logits, tokens) of a timm ViT: ``forward_features`` (which ends with the final norm), its patch tokens
    (the prefix tokens dropped) as (B, Hp, Wp, D), and ``forward_head`` of the same features."""
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    if grid is None or not hasattr(net, "num_prefix_tokens") or timm_last_attention(net) is None:
        raise PluginError(missing)
    h = net.forward_features(x)
    if h.dim() != 3:
        raise PluginError(missing)
    tokens = h[:, int(net.num_prefix_tokens):]
    return net.forward_head(h), tokens.reshape(h.shape[0], *grid, h.shape[-1])


class TimmAdapter(_Wrapped):
    """A timm model addressed through timm's feature API, as the ``timm`` model plugin does."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net)
        mods = dict(net.named_modules())
        self._names = [f["module"] for f in net.feature_info if f["module"] in mods]
        if not self._names:
            raise PluginError(f"{type(net).__name__}: its timm feature_info names no submodule")
        self.classifier = net.get_classifier()
        self._in_shape = None
        cfg = getattr(net, "pretrained_cfg", None) or {}
        if "input_size" in cfg and getattr(getattr(net, "patch_embed", None), "img_size", None) is not None:
            self._in_shape = (int(cfg["input_size"][0]), *map(int, net.patch_embed.img_size))

    @property
    def num_stages(self) -> int:
        return len(self._names)

    @property
    def embed_position(self) -> int:
        return self.num_stages + 1

    @property
    def stages(self):
        return [self.net.get_submodule(n) for n in self._names]

    def _level(self, position: int) -> nn.Module:
        return self.net.get_submodule(self._names[position - 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._in_shape = tuple(x.shape[1:])
        return self.net(x)

    def forward_to(self, x: torch.Tensor, position: int) -> torch.Tensor:
        self._in_shape = tuple(x.shape[1:])
        return timm_forward_to(self.net, self._level, self.num_stages, x, position)

    def forward_from(self, h: torch.Tensor, position: int) -> torch.Tensor:
        return timm_forward_from(self.net, self._level, self.num_stages, self.classifier, h, position,
                                 self._in_shape)

    def class_attention(self, x: torch.Tensor):
        """(logits, attn) of a timm ViT with a class token (as the ``timm`` model plugin)."""
        return timm_class_attention(self.net, x, f"{type(self.net).__name__} has no class-token attention "
                                    "(TransMix needs a timm ViT with a class token)")

    def patch_tokens(self, x: torch.Tensor):
        """(logits, patch tokens) of a timm ViT (as the ``timm`` model plugin)."""
        return timm_patch_tokens(self.net, x, f"{type(self.net).__name__} has no patch tokens (a timm ViT is "
                                 "needed)")

    def patch_attention(self, x: torch.Tensor):
        """(logits, patch attention) of a timm ViT (as the ``timm`` model plugin)."""
        return timm_patch_attention(self.net, x, f"{type(self.net).__name__} has no patch attention (a timm ViT "
                                    "is needed)")
