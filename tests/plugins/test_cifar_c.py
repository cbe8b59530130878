"""The CIFAR-10-C corruptions of mixcli/data/cifar_c.py against ports of the reference generator
(hendrycks/robustness make_cifar_c.py: numpy, scipy, OpenCV, PIL) fed the same random draws, ImageMagick's
motion blur when the real ``convert`` is installed, and the evaluator's sets and metrics."""
from __future__ import annotations

import json
import math
import shutil
import subprocess

import numpy as np
import pytest
import torch
from scipy import ndimage

from mixcli.data import cifar_c as Q
from mixcli_plugins.evaluators import corruptions as C

cv2 = pytest.importorskip("cv2")


def images(b=3, c=3, h=32, w=32, seed=0):
    """Smooth random images with detail (so blurs and edges matter), float32 in [0, 1] on the 1/255 grid."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((b, c, h // 4, w // 4), generator=g)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    x = 0.7 * x + 0.3 * torch.rand((b, c, h, w), generator=g)
    return torch.floor(x * 255) / 255


def hwc(x):
    return x.permute(1, 2, 0).double().numpy()


def sk_gaussian(a, sigma, mode="nearest", truncate=4.0, multichannel=False):
    """skimage.filters.gaussian: scipy's gaussian_filter, the channel axis left alone."""
    s = (sigma, sigma, 0) if multichannel else sigma
    return ndimage.gaussian_filter(a, s, mode=mode, truncate=truncate)


# ------------------------------------------------------------------------------------------------ zoom
def ref_clipped_zoom(img, zoom_factor):
    h = img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    img = ndimage.zoom(img[top:top + ch, top:top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim_top = (img.shape[0] - h) // 2
    return img[trim_top:trim_top + h, trim_top:trim_top + h]


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_zoom_blur_matches_the_reference(severity):
    x = images()
    z_max = Q.PARAMS["zoom_blur"][severity - 1]
    got = Q.zoom_blur(x, z_max)
    for i in range(len(x)):
        a = hwc(x[i]).astype(np.float32)
        out = np.zeros_like(a)
        for z in np.arange(1, z_max, 0.01):
            out += ref_clipped_zoom(a, z)
        ref = (a + out) / (len(np.arange(1, z_max, 0.01)) + 1)
        np.testing.assert_allclose(hwc(got[i]), ref, atol=2e-6)


# ----------------------------------------------------------------------------------------------- glass
@pytest.mark.parametrize("severity", [1, 4])
def test_glass_blur_matches_the_reference(severity):
    sigma, delta, iters = Q.PARAMS["glass_blur"][severity - 1]
    x = images(b=2)
    got = C.apply(x, "glass_blur", severity, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws, in the port's order
    h = w = 32
    npos = len(range(h - delta, delta, -1)) * len(range(w - delta, delta, -1))
    draws = [torch.randint(-delta, delta, (npos, 2, len(x)), generator=g) for _ in range(iters)]
    for i in range(len(x)):
        a = np.uint8(sk_gaussian(hwc(x[i]), sigma, multichannel=True) * 255 + 1e-4)
        for it in range(iters):
            k = 0
            for hh in range(h - delta, delta, -1):
                for ww in range(w - delta, delta, -1):
                    dx, dy = int(draws[it][k, 0, i]), int(draws[it][k, 1, i])
                    k += 1
                    hp, wp = hh + dy, ww + dx
                    a[hh, ww], a[hp, wp] = a[hp, wp], a[hh, ww]  # the reference's line (views: a copy)
        ref = np.uint8(np.clip(sk_gaussian(a / 255., sigma, multichannel=True), 0, 1) * 255 + 1e-4)
        np.testing.assert_array_equal(np.round(hwc(got[i]) * 255).astype(np.uint8), ref)


# ---------------------------------------------------------------------------------------------- motion
def real_imagemagick():
    exe = shutil.which("convert")
    if exe is None:
        return False
    out = subprocess.run([exe, "-version"], capture_output=True, text=True)
    return out.returncode == 0 and "ImageMagick" in out.stdout


@pytest.mark.skipif(not real_imagemagick(), reason="ImageMagick's convert is not installed")
@pytest.mark.parametrize("channels", [3, 1])
def test_motion_blur_equals_imagemagick(tmp_path, channels):
    from PIL import Image

    x = images(b=4, c=channels, seed=2)
    rng = np.random.default_rng(0)
    for i, (radius, sigma) in enumerate([(6, 1), (8, 2), (9, 2.5), (14, 12)]):
        angle = float(rng.uniform(-135, 45))
        a = np.round(hwc(x[i]) * 255).astype(np.uint8)
        Image.fromarray(a[..., 0] if channels == 1 else a).save(tmp_path / "in.png")
        subprocess.run(["convert", str(tmp_path / "in.png"), "-motion-blur", f"{radius}x{sigma}+{angle}",
                        str(tmp_path / "out.png")], check=True)
        ref = np.asarray(Image.open(tmp_path / "out.png").convert("L" if channels == 1 else "RGB"))
        got = Q.motion_blur(x[i:i + 1], radius, sigma, torch.tensor([angle]))[0]
        np.testing.assert_array_equal(np.round(hwc(got) * 255).astype(np.uint8).reshape(ref.shape), ref)


def test_motion_taps_follow_imagemagicks_kernel():
    k, dr, dc = Q.motion_taps(6, 1.5, torch.tensor([0.0, 90.0, -45.0]))
    assert len(k) == 13 and float(k.sum()) == pytest.approx(1.0)
    np.testing.assert_allclose(k.numpy(), np.exp(-np.arange(13) ** 2 / 4.5) / np.exp(-np.arange(13) ** 2 / 4.5).sum())
    assert dr[:, 0].tolist() == [0] * 13 and dc[:, 0].tolist() == list(range(13))  # angle 0: along the row
    assert dr[:, 1].tolist() == list(range(13)) and dc[:, 1].abs().max() == 0     # 90: down the column
    assert (dr[:, 2] == -dc[:, 2]).all()


# ------------------------------------------------------------------------------------------------- fog
def ref_plasma_fractal(mapsize, wibbledecay, uniform):
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100

    def wibbledmean(array):
        return array / 4 + wibble * uniform(-wibble, wibble, array.shape)

    def fillsquares():
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(squareaccum)

    def filldiamonds():
        mapsize_ = maparray.shape[0]
        drgrid = maparray[stepsize // 2:mapsize_:stepsize, stepsize // 2:mapsize_:stepsize]
        ulgrid = maparray[0:mapsize_:stepsize, 0:mapsize_:stepsize]
        ldrsum = drgrid + np.roll(drgrid, 1, axis=0)
        lulsum = ulgrid + np.roll(ulgrid, -1, axis=1)
        ltsum = ldrsum + lulsum
        maparray[0:mapsize_:stepsize, stepsize // 2:mapsize_:stepsize] = wibbledmean(ltsum)
        tdrsum = drgrid + np.roll(drgrid, 1, axis=1)
        tulsum = ulgrid + np.roll(ulgrid, -1, axis=0)
        ttsum = tdrsum + tulsum
        maparray[stepsize // 2:mapsize_:stepsize, 0:mapsize_:stepsize] = wibbledmean(ttsum)

    while stepsize >= 2:
        fillsquares()
        filldiamonds()
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


@pytest.mark.parametrize("severity", [1, 5])
def test_fog_matches_the_reference(severity):
    a, decay = Q.PARAMS["fog"][severity - 1]
    x = images(b=1)
    got = Q.fog(x, a, decay, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)

    def uniform(lo, hi, shape):  # the port's draw for one map: rand * 2w - w
        return (torch.rand((1, *shape), dtype=torch.float64, generator=g)[0] * (hi - lo) + lo).numpy()

    frac = ref_plasma_fractal(32, decay, uniform)
    ref = hwc(x[0])
    max_val = ref.max()
    ref = ref + a * frac[:32, :32][..., None]
    ref = np.clip(ref * max_val / (max_val + a), 0, 1)
    np.testing.assert_allclose(hwc(got[0]), ref, atol=1e-6)


# --------------------------------------------------------------------------------------------- elastic
def test_elastic_transform_matches_the_reference_within_opencvs_fixed_point():
    x = images(b=3, seed=4)
    for severity in (1, 3, 5):
        got = Q.elastic_transform(x, Q.PARAMS["elastic_transform"][severity - 1], torch.Generator().manual_seed(9))
        g = torch.Generator().manual_seed(9)
        c = [v * 32 for v in Q.PARAMS["elastic_transform"][severity - 1]]
        shifts = ((torch.rand((3, 3, 2), generator=g, dtype=torch.float64) * 2 - 1) * c[2]).numpy().astype(np.float32)
        noise = (torch.rand((3, 2, 32, 32), generator=g, dtype=torch.float64) * 2 - 1).numpy()
        for i in range(3):
            image = hwc(x[i]).astype(np.float32)
            shape_size = image.shape[:2]
            center_square = np.float32(shape_size) // 2
            square_size = min(shape_size) // 3
            pts1 = np.float32([center_square + square_size,
                               [center_square[0] + square_size, center_square[1] - square_size],
                               center_square - square_size])
            pts2 = pts1 + shifts[i]
            M = cv2.getAffineTransform(pts1, pts2)
            image = cv2.warpAffine(image, M, shape_size[::-1], borderMode=cv2.BORDER_REFLECT_101)
            dx = (sk_gaussian(noise[i, 0], c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
            dy = (sk_gaussian(noise[i, 1], c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
            dx, dy = dx[..., None], dy[..., None]
            xx, yy, zz = np.meshgrid(np.arange(32), np.arange(32), np.arange(3))
            ind = np.reshape(yy + dy, (-1, 1)), np.reshape(xx + dx, (-1, 1)), np.reshape(zz, (-1, 1))
            ref = np.clip(ndimage.map_coordinates(image, ind, order=1, mode="reflect").reshape(image.shape), 0, 1)
            diff = np.abs(hwc(got[i]) - ref)
            # OpenCV's warpAffine rounds coordinates to 1/32 pixel and weights to 1/1024: a few grey levels
            assert diff.mean() < 2e-3 and diff.max() < 12 / 255, (severity, diff.mean(), diff.max())


def test_affine_from_points_is_opencvs():
    rng = np.random.default_rng(0)
    src, dst = rng.uniform(0, 32, (3, 2)).astype(np.float32), rng.uniform(0, 32, (3, 2)).astype(np.float32)
    np.testing.assert_allclose(Q.affine_from_points(src.astype(np.float64), dst.astype(np.float64)),
                               cv2.getAffineTransform(src, dst), atol=1e-4)


# --------------------------------------------------------------------------------------------- spatter
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_spatter_matches_the_reference(severity):
    c = Q.PARAMS["spatter"][severity - 1]
    x = images(b=2, seed=7)
    got = Q.spatter(x, c, torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)
    normal = (c[0] + c[1] * torch.randn((2, 32, 32), generator=g, dtype=torch.float64)).numpy()
    for i in range(2):
        xi = hwc(x[i]).astype(np.float32)
        liquid_layer = sk_gaussian(normal[i], sigma=c[2])
        liquid_layer[liquid_layer < c[3]] = 0
        if c[5] == 0:
            liquid_layer = (liquid_layer * 255).astype(np.uint8)
            dist = 255 - cv2.Canny(liquid_layer, 50, 150)
            dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
            _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
            dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
            dist = cv2.equalizeHist(dist)
            ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
            dist = cv2.filter2D(dist, cv2.CV_8U, ker)
            dist = cv2.blur(dist, (3, 3)).astype(np.float32)
            m = cv2.cvtColor(liquid_layer * dist, cv2.COLOR_GRAY2BGRA)
            m /= np.max(m, axis=(0, 1))
            m *= c[4]
            color = np.concatenate((175 / 255. * np.ones_like(m[..., :1]), 238 / 255. * np.ones_like(m[..., :1]),
                                    238 / 255. * np.ones_like(m[..., :1])), axis=2)
            color = cv2.cvtColor(color, cv2.COLOR_BGR2BGRA)
            xb = cv2.cvtColor(xi, cv2.COLOR_BGR2BGRA)
            ref = cv2.cvtColor(np.clip(xb + m * color, 0, 1), cv2.COLOR_BGRA2BGR)
        else:
            m = np.where(liquid_layer > c[3], 1, 0)
            m = sk_gaussian(m.astype(np.float32), sigma=c[4])
            m[m < 0.8] = 0
            color = np.concatenate((63 / 255. * np.ones_like(xi[..., :1]), 42 / 255. * np.ones_like(xi[..., :1]),
                                    20 / 255. * np.ones_like(xi[..., :1])), axis=2)
            color *= m[..., None]
            xi = xi * (1 - m[..., None])
            ref = np.clip(xi + color, 0, 1)
        np.testing.assert_allclose(hwc(got[i]), ref, atol=2e-6)


# ------------------------------------------------------------------------------------------------ snow
def test_snow_composes_the_references_steps():
    p = Q.PARAMS["snow"][2]
    x = images(b=2, seed=8)
    got = Q.snow(x, p, torch.Generator().manual_seed(12))
    g = torch.Generator().manual_seed(12)
    layer = p[0] + p[1] * torch.randn((2, 1, 32, 32), generator=g)
    angle = torch.rand(2, generator=g) * 90 - 135
    for i in range(2):
        s = ref_clipped_zoom(layer[i, 0].numpy()[..., None], p[2])
        s[s < p[3]] = 0
        s8 = (np.clip(s.squeeze(), 0, 1) * 255).astype(np.uint8)
        blurred = Q.motion_blur(torch.from_numpy(s8 / 255.).float()[None, None], p[4], p[5], angle[i:i + 1])
        s = blurred[0, 0].numpy()[..., None].astype(np.float64)
        xi = hwc(x[i]).astype(np.float32)
        xi = p[6] * xi + (1 - p[6]) * np.maximum(xi, cv2.cvtColor(xi, cv2.COLOR_RGB2GRAY).reshape(32, 32, 1) * 1.5 + 0.5)
        ref = np.clip(xi + s + np.rot90(s, k=2), 0, 1)
        np.testing.assert_allclose(hwc(got[i]), ref, atol=1e-5)


# ----------------------------------------------------------------------------------------------- frost
@pytest.fixture
def frost_dir(tmp_path):
    rng = np.random.default_rng(0)
    for k, f in enumerate(Q.FROST_FILES):
        cv2.imwrite(str(tmp_path / f), rng.integers(0, 256, (300 + 20 * k, 400, 3)).astype(np.uint8))
    return tmp_path


def test_frost_matches_the_reference(frost_dir):
    x = images(b=4, seed=9)
    pics = Q.frost_pictures(str(frost_dir))
    got = Q.frost(x, 0.9, 0.4, pics, torch.Generator().manual_seed(13))
    g = torch.Generator().manual_seed(13)
    idx = torch.randint(0, 5, (4,), generator=g).tolist()
    u = torch.rand((4, 2), generator=g, dtype=torch.float64)
    for i in range(4):
        fr = cv2.imread(str(frost_dir / list(Q.FROST_FILES)[idx[i]]))
        fr = cv2.resize(fr, (0, 0), fx=0.2, fy=0.2)
        xs, ys = int(u[i, 0] * (fr.shape[0] - 32)), int(u[i, 1] * (fr.shape[1] - 32))
        fr = fr[xs:xs + 32, ys:ys + 32][..., [2, 1, 0]]
        ref = np.clip(0.9 * np.round(hwc(x[i]) * 255) + 0.4 * fr, 0, 255)
        np.testing.assert_allclose(hwc(got[i]) * 255, ref, atol=1e-3)


def test_frost_without_pictures_is_a_clear_error_in_validate_and_run(tmp_path, cli, write):
    from mixcli.api import PluginError

    with pytest.raises(PluginError, match="frost needs the reference's frost pictures"):
        Q.frost_pictures(str(tmp_path / "none"))
    exp = write(f"""\
        name: frost
        dataset: {{name: digits, fraction: 0.1}}
        model: {{name: cnn, width: 4}}
        train: {{epochs: 1}}
        eval: {{extra: [{{name: corruptions, frost_dir: {tmp_path / 'none'}}}]}}
        seeds: [0]
        """)
    for cmd in (("validate", exp), ("run", exp, "--out", tmp_path / "r", "--device", "cpu")):
        code, text = cli(*cmd)
        assert code == 2 and "frost needs the reference's frost pictures" in text and "download: true" in text
    C.Corruptions(frost_dir=str(tmp_path / "none"), download=True)  # fetched when the run starts
    C.Corruptions(corruptions=["fog"], frost_dir=str(tmp_path / "none"))  # no frost, no pictures needed


# ------------------------------------------------------------------------------------------------ jpeg
@pytest.mark.parametrize("channels", [3, 1])
def test_jpeg_is_pils_encoder(channels):
    import io

    from PIL import Image

    x = images(b=2, c=channels, seed=10)
    got = C.apply(x, "jpeg_compression", 4)
    for i in range(2):
        a = np.round(hwc(x[i]) * 255).astype(np.uint8)
        img = Image.fromarray(a[..., 0] if channels == 1 else a)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=50)
        ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        np.testing.assert_array_equal(np.round(hwc(got[i]) * 255).astype(np.uint8).reshape(ref.shape), ref)


# ------------------------------------------------------------------------------------------- evaluator
def test_default_set_is_the_standard_15_and_the_error_is_their_mean(frost_dir, tmp_path):
    from test_evaluators import _digits, _fitted_linear, _run_eval

    ev = C.Corruptions(frost_dir=str(frost_dir))
    assert ev.corruptions == list(C.STANDARD) and len(C.STANDARD) == 15 and len(C.EXTRA) == 4
    assert set(C.STANDARD) | set(C.EXTRA) == set(C.CIFAR_C) and len(C.CIFAR_C) == 19
    data = _digits()
    model = _fitted_linear(data)
    out, _ = _run_eval(model, data, [{"name": "corruptions", "corruptions": list(C.GENERATED), "severities": [2],
                                      "frost_dir": str(frost_dir)}], artifacts=tmp_path / "run")
    per = {c: out[f"test_corruption_{c}"] for c in C.GENERATED if f"test_corruption_{c}" in out}
    assert "saturate" not in per and len(per) == 18  # grey digits: saturate does not apply
    assert out["test_corruption_error"] == pytest.approx(np.mean([1 - per[c] for c in C.STANDARD]))
    assert out["test_corruption_accuracy"] == pytest.approx(np.mean([per[c] for c in C.STANDARD]))
    rec = json.loads((tmp_path / "run" / "corruption_set.json").read_text())
    assert rec["standard_15"] is True and rec["error_over"] == list(C.STANDARD) and rec["severities"] == [2]
    assert rec["not_applicable"] == ["saturate"]
    out, _ = _run_eval(model, data, [{"name": "corruptions", "corruptions": list(C.EXTRA), "severities": [1]}])
    assert "test_corruption_error" not in out and "test_corruption_spatter" in out
