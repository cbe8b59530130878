"""What ``train.batch_seeds`` may batch: the seeds of one configuration trained together as one batched
model (:mod:`mixcli.training.batched`), and why the rest cannot be.

A configuration batches exactly when each member can be made to equal the unbatched run of its seed:

- the method calls the model only as ``model(x)``, ``model.forward_to(x, k)`` and ``model.forward_from(h, k)``
  and draws only from ``ctx.rng`` (input-level and loss-level methods, manifold mixup, C-Mixup), and the
  loss is a function of the method's output (it never calls the model itself);
- the model is one whose forward has no randomness of its own (dropout masks would come from one shared
  generator, not the member's) and whose layers ``torch.func.vmap`` runs (MLP, CNN, ResNets; BatchNorm
  statistics are kept per member);
- the run is not compiled (``train.compile``: the batched forward is eager).

No torch here: ``mixcli validate`` reads it.
"""
from __future__ import annotations

#: methods whose model calls go through ``model(x)`` / ``forward_to`` / ``forward_from`` only, with every draw
#: from ``ctx.rng``
BATCHABLE_METHODS = ("erm", "mixup", "cutmix", "manifold_mixup", "cmixup", "regmixup", "fmix", "resizemix")

#: why the other built-in methods cannot be batched
WHY_NOT_METHOD = {
    "saliencymix": "it takes the gradient of the input through the model inside the step",
    "puzzlemix": "it takes the gradient of the input through the model inside the step",
    "snapmix": "it reads the model's class activation maps (model.class_activation)",
    "transmix": "it reads the model's class attention (model.class_attention)",
    "automix": "it trains its own mixing network next to the model, with its own backward and optimizer",
    "selmix": "it reads the model's classifier and runs it in eval mode inside the step",
    "alignmix": "it switches the model between train and eval mode inside the step",
    "gridmix": "not checked for batching yet",
    "smoothmix": "not checked for batching yet",
    "mdyr": "not checked for batching yet",
    "mixpro": "not checked for batching yet",
    "smmix": "not checked for batching yet",
    "tokenmix": "not checked for batching yet",
}

#: losses that are a function of the method's output only (they never call the model themselves)
BATCHABLE_LOSSES = ("soft_ce", "mse", "decoupled")

WHY_NOT_LOSS = {
    "sumix": "it runs the model itself on the clean batch (ctx.model), outside the batched forward",
}

#: models whose forward ``vmap`` runs over stacked per-member weights (with ``dropout: 0``)
BATCHABLE_MODELS = ("mlp", "cnn", "resnet18", "preact_resnet18", "wrn")

WHY_NOT_MODEL = {
    "timm": "timm models are not checked for batching (their layers may not run under torch.func.vmap)",
    "random_features": "not checked for batching yet",
}

#: auto: batch only where benchmarks/batched_seeds.py measured a speed-up (2-core CPU, one thread, K = 10:
#: the Airfoil MLP 1.1-1.5x wall, 1.02-1.12x CPU, never slower; convolutions left out, the issue's probe
#: measured the CNN at 0.49x; CUDA not measured yet). See the README, "Seeds as one batched model".
AUTO_MODELS = {"cpu": ("mlp",)}
AUTO_MIN_SEEDS = 10


def refusals(cfg: dict) -> list[tuple[str, str]]:
    """``[(key, why)]``: the parts of the resolved configuration ``cfg`` that cannot be batched."""
    out = []
    method = (cfg.get("method") or {}).get("name")
    if method is not None and method not in BATCHABLE_METHODS:
        why = WHY_NOT_METHOD.get(method, "a plugin method is not known to batch")
        out.append(("method", f"method '{method}' cannot be batched: {why}"))
    loss = (cfg.get("loss") or {}).get("name")
    if loss is not None and loss not in BATCHABLE_LOSSES:
        why = WHY_NOT_LOSS.get(loss, "a plugin loss is not known to batch")
        out.append(("loss", f"loss '{loss}' cannot be batched: {why}"))
    model = cfg.get("model") or {}
    name = model.get("name")
    if name is not None and name not in BATCHABLE_MODELS:
        why = WHY_NOT_MODEL.get(name, "a plugin model is not known to batch")
        out.append(("model", f"model '{name}' cannot be batched: {why}"))
    elif model.get("dropout"):
        out.append(("model.dropout", f"model '{name}' with dropout {model['dropout']} cannot be batched: the "
                    "members' dropout masks would not be the ones their unbatched runs draw; set dropout 0"))
    train = cfg.get("train") or {}
    if train.get("compile"):
        out.append(("train.compile", "train.compile cannot be batched: the batched forward runs eagerly; "
                    "set compile false"))
    return out


def auto_batches(cfg: dict, n_seeds: int, device_type: str) -> bool:
    """``batch_seeds: auto``: batch where the benchmark shows it pays (and the configuration batches)."""
    name = (cfg.get("model") or {}).get("name")
    return (n_seeds >= AUTO_MIN_SEEDS and name in AUTO_MODELS.get(device_type, ()) and not refusals(cfg))
