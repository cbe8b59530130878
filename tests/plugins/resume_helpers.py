"""The interrupt-and-resume twin that the stateful methods' resume tests compare (automix, samix, adautomix,
smmix, mdyr): the same experiment run once uninterrupted and once stopped by Ctrl-C mid-run and resumed."""
from __future__ import annotations

import torch


def full_and_resumed(cli, exp, tmp_path, monkeypatch, evaluations: int = 2) -> tuple[dict, dict]:
    """Run the experiment file ``exp`` uninterrupted into ``tmp_path/full`` and, into ``tmp_path/cut``, stopped
    by Ctrl-C at the evaluation after the first ``evaluations`` (each epoch evaluates val and test: 2 stops
    during epoch 2) and then resumed. Checks that the two final models are bit-identical and returns both
    final checkpoints (loaded weights-only) for the method's own parts."""
    from mixcli.training import engine

    code, text = cli("run", exp, "--out", tmp_path / "full", "--device", "cpu")
    assert code == 0, text
    real, calls = engine.evaluate, {"n": 0}

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] > evaluations:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "evaluate", crash)
    assert cli("run", exp, "--out", tmp_path / "cut", "--device", "cpu")[0] == 130
    monkeypatch.setattr(engine, "evaluate", real)
    assert cli("run", exp, "--out", tmp_path / "cut", "--device", "cpu")[0] == 0
    (fa,), (fb,) = (list((tmp_path / d / "jobs").glob("*/checkpoint.pt")) for d in ("full", "cut"))
    a, b = torch.load(fa, weights_only=True), torch.load(fb, weights_only=True)
    assert_same(a["model"], b["model"])
    return a, b


def assert_same(sa: dict, sb: dict) -> None:
    """Every tensor of state dict ``sa`` equals ``sb``'s bit for bit."""
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)
