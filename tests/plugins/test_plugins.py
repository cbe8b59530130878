"""Third-party plugin packages, built and installed for real with pip, found through entry points."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(marker: str) -> str:
    """The fenced code block that follows ``marker`` in README.md (the plugin section is tested as written)."""
    text = README.read_text()
    start = text.index(marker)
    body = text[text.index("```", start):]
    body = body[body.index("\n") + 1:]
    return body[: body.index("```")]


def make_package(root: Path, name: str, pyproject: str, files: dict[str, str]) -> Path:
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(textwrap.dedent(pyproject))
    for rel, text in files.items():
        f = pkg / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
    return pkg


def method_pyproject(dist: str, entry_point: str) -> str:
    """A minimal pyproject.toml registering one method entry point (``name = "module:Class"``)."""
    return f"""\
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "0.0.1"
        [project.entry-points."mixcli.methods"]
        {entry_point}
        """


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Three packages installed with pip into one target directory: the README's example, a broken plugin,
    and a package that registers a name mixcli already uses."""
    root = tmp_path_factory.mktemp("pkgs")
    good = make_package(root, "flipmix", readme_block("<!-- plugin-pyproject -->"),
                        {"mixcli_flipmix.py": readme_block("<!-- plugin-code -->")})
    broken = make_package(root, "broken", method_pyproject("mixcli-broken", 'brokenmix = "mixcli_broken:BrokenMix"'),
                          {"mixcli_broken.py": "import a_module_that_does_not_exist\n"})
    clash = make_package(root, "clash", method_pyproject("mixcli-clash", 'cutmix = "mixcli_clash:Other"'),
                         {"mixcli_clash.py": "class Other: pass\n"})
    target = root / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(target), str(good), str(broken), str(clash)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return target


def mixcli(site: Path, *args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "600"}
    return subprocess.run([sys.executable, "-m", "mixcli.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd)


def test_installed_plugin_is_listed_and_runs_by_name(site, tmp_path):
    r = mixcli(site, "list", "methods")
    assert r.returncode == 0, r.stderr
    assert "flipmix" in r.stdout and "mixcli-flipmix" in r.stdout and "alpha=1.0" in r.stdout
    # the broken plugin is reported with its error; the other plugins are still listed
    assert "brokenmix" in r.stdout and "a_module_that_does_not_exist" in r.stdout
    assert "mixup" in r.stdout
    # the clash names both packages
    flat = " ".join(r.stdout.split())
    assert ("registered by more than one package: mixcli, mixcli-clash" in flat
            or "registered by more than one package: mixcli-clash, mixcli" in flat)

    exp = tmp_path / "exp.yaml"
    exp.write_text(TINY.replace("method: erm", "method: {name: flipmix, alpha: 0.5}")
                   .replace("{name: mlp, widths: [32]}", "{name: cnn, width: 8}").replace("epochs: 3", "epochs: 2"))
    r = mixcli(site, "run", exp, "--out", tmp_path / "out", "--device", "cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    runs = pd.read_parquet(tmp_path / "out" / "runs")
    assert runs["method"].tolist() == ["flipmix"] and runs["status"].tolist() == ["finished"]


def test_broken_or_clashing_plugin_fails_only_the_run_that_names_it(site, tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(TINY.replace("method: erm", "method: brokenmix"))
    r = mixcli(site, "validate", exp)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    msg = " ".join(r.stderr.split())
    assert "method plugin 'brokenmix' from package 'mixcli-broken' failed to load" in msg
    assert "ModuleNotFoundError" in msg
    exp.write_text(TINY.replace("method: erm", "method: cutmix"))
    r = mixcli(site, "validate", exp)
    assert r.returncode == 2 and "registered by more than one package" in r.stderr
    assert "mixcli-clash" in r.stderr and "uninstall one of them" in " ".join(r.stderr.split())
    exp.write_text(TINY)
    assert mixcli(site, "validate", exp).returncode == 0
