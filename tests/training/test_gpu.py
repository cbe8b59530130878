"""The CUDA path: device data equals the CPU path, a bf16 channels_last step without host syncs, compile.

Every test here skips without CUDA.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mixcli.api import Context
from mixcli.data.device import DeviceData
from mixcli.registry import REGISTRY

from image_bundles import bundle

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_device_data_on_cuda_matches_the_cpu_path():
    data = bundle(n=40, h=32, w=32)
    gpu, cpu = DeviceData(data, CUDA, seed=0), DeviceData(data, CPU, seed=0)
    assert gpu.train.x.dtype == torch.uint8 and gpu.train.x.is_cuda
    index = torch.arange(0, 40, 3)
    x = gpu.fetch(index.cuda())[0]
    assert x.shape == (len(index), 3, 32, 32) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    # the same crops and flips as F.pad + slicing per image, with offsets from a CUDA generator seeded alike
    g = torch.Generator(device="cuda").manual_seed(0)
    b, p = len(index), data.pad
    dy = torch.randint(0, 2 * p + 1, (b,), device="cuda", generator=g).cpu()
    dx = torch.randint(0, 2 * p + 1, (b,), device="cuda", generator=g).cpu()
    flip = (torch.rand(b, device="cuda", generator=g) < 0.5).cpu()
    padded = torch.nn.functional.pad(data.train.x[index].float(), (p, p, p, p), mode="reflect")
    crops = torch.stack([padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32] for i in range(b)])
    crops = torch.where(flip[:, None, None, None], crops.flip(3), crops)
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x.cpu(), (crops / 255 - mean) / std, rtol=0, atol=1e-5)
    # evaluation batches: identical values on both devices
    for (xg, yg), (xc, yc) in zip(gpu.eval_batches("test", 2), cpu.eval_batches("test", 2)):
        assert xg.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)
        assert torch.equal(yg.cpu(), yc)


@pytest.mark.parametrize("method", [("erm", {}), ("mixup", {"alpha": 1.0}), ("cutmix", {"alpha": 1.0}),
                                    ("manifold_mixup", {"alpha": 2.0})])
def test_bf16_channels_last_steps_do_not_sync(method):
    data = bundle(n=64, h=32, w=32)
    dd = DeviceData(data, CUDA, seed=0)
    torch.manual_seed(0)
    model = REGISTRY.get("models", "resnet18")((3, 32, 32), 3).cuda().to(memory_format=torch.channels_last)
    m = REGISTRY.get("methods", method[0])(**method[1])
    loss_fn = REGISTRY.get("losses", "soft_ce")()
    ctx = Context("classification", 3, CUDA, np.random.default_rng(0), dd.train, dd.fetch, 1, data=data,
                  model=model)
    m.setup(ctx)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = model.classifier.weight.detach().clone()
    loss_sum = torch.zeros((), device=CUDA)
    batches = list(dd.train_batches(16))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = m(model, batch, ctx)
                assert out.logits.dtype == torch.bfloat16
                loss = loss_fn(out, ctx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().float()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss_sum).item()
    assert not torch.equal(before, model.classifier.weight)
    assert model.stages[0][0].weight.is_contiguous(memory_format=torch.channels_last)


def test_compiled_stages_on_cuda_match_eager_and_checkpoint_loads(cli, write, tmp_path):
    from mixcli.training.engine import compile_stages

    torch.manual_seed(0)
    m = REGISTRY.get("models", "resnet18")((3, 32, 32), 10).cuda().eval()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    with torch.no_grad():
        eager = [m.forward_to(x, k) for k in range(m.embed_position + 1)]
        logits = m(x)
        compile_stages(m)
        for k in range(m.embed_position + 1):
            torch.testing.assert_close(m.forward_to(x, k), eager[k], rtol=1e-3, atol=1e-3)
            torch.testing.assert_close(m.forward_from(eager[k], k), logits, rtol=1e-3, atol=1e-3)

    out = tmp_path / "out"
    code, text = cli("run", write("""\
        name: compiled_cuda
        dataset: {name: digits}
        model: {name: cnn, width: 8}
        method: {name: manifold_mixup}
        train: {epochs: 2, batch_size: 64, compile: true, precision: bf16}
        """), "--out", out, "--device", "cuda")
    assert code == 0, text
    state = torch.load(next((out / "jobs").glob("*/checkpoint.pt")), map_location="cpu", weights_only=True)
    REGISTRY.get("models", "cnn")((1, 8, 8), 10, width=8).load_state_dict(state["model"])


def test_benchmark_runs_on_cuda(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"
    spec = importlib.util.spec_from_file_location("throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--device", "cuda", "--steps", "3", "--warmup", "1", "--workers", "1", "--images", "512",
                "--methods", "erm,mixup"])
    text = capsys.readouterr().out
    assert "mixup alpha=1.0" in text and "ratio" in text


def test_jobs_packed_onto_one_gpu_run_pinned_and_finish(tmp_path):
    """--jobs-per-gpu 2: two worker processes share GPU 0, each pinned through CUDA_VISIBLE_DEVICES."""
    import subprocess
    import sys

    import pandas as pd

    from conftest import TINY

    exp = tmp_path / "exp.yaml"
    exp.write_text(TINY.replace("seeds: [0]", "seeds: [0, 1]"))
    r = subprocess.run([sys.executable, "-m", "mixcli.cli", "run", str(exp), "--out", str(tmp_path / "o"),
                        "--device", "cuda", "--gpus", "0", "--jobs-per-gpu", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 at once" in r.stdout
    runs = pd.read_parquet(tmp_path / "o" / "runs")
    assert set(runs["status"]) == {"finished"} and set(runs["device"]) == {"cuda"}
    assert runs["pid"].nunique() == 2
