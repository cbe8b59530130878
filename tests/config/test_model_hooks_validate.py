"""validate refuses a method whose model hook (class_attention, patch_tokens, ...) the model lacks, in one
line, as run does at its first step; a model that has the hook passes."""
from __future__ import annotations

import pytest

VIT = "{name: timm, arch: vit_tiny_patch16_224, img_size: 8, patch_size: 2, timm_args: {depth: 1, embed_dim: 16, num_heads: 2}}"


@pytest.mark.parametrize("method,model,ok", [
    ("transmix", "{name: cnn, width: 4}", False),
    ("tokenmix", "{name: cnn, width: 4}", False),
    ("smmix", "{name: cnn, width: 4}", False),
    ("snapmix", "{name: cnn, width: 4}", True),
    ("transmix", VIT, True),
])
def test_model_hooks_checked_by_validate(cli, write, tmp_path, method, model, ok):
    exp = write(f"""\
        name: hooks
        dataset: {{name: digits}}
        model: {model}
        method: {method}
        train: {{epochs: 1}}
        seeds: [0]
        """)
    code, text = cli("validate", exp)
    if ok:
        assert code == 0, text
    else:
        assert code == 2 and "Traceback" not in text, text
        lines = [ln for ln in text.splitlines() if ln.strip()]
        assert len(lines) == 1 and f"method '{method}' with model 'cnn'" in lines[0], text
