"""compare: LaTeX tables, several output directories, best within blocks (--within), 80-column rendering.

The result directories are written directly through the store with known numbers, so every expected mean
and std is computed here independently (numpy) and no training is needed."""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from rich.console import Console

from mixcli.results.compare import compare
from mixcli.results.render import render
from mixcli.results.store import Store

METHODS = ("erm", "mixup", "cutmix")
FRACTIONS = (0.3, 0.6)
SEEDS = (0, 1, 2)


def acc_of(method: str, fraction: float, seed: int) -> float:
    """Known accuracies: erm best at 0.3, mixup best at 0.6 (so per-block bests differ from the global)."""
    base = {("erm", 0.3): 0.70, ("mixup", 0.3): 0.60, ("cutmix", 0.3): 0.50,
            ("erm", 0.6): 0.74, ("mixup", 0.6): 0.90, ("cutmix", 0.6): 0.80}[method, fraction]
    return base + 0.01 * seed


def nll_of(method: str, fraction: float, seed: int) -> float:
    return 2.0 - acc_of(method, fraction, seed) + 0.001 * seed * seed


def fill(out, methods=METHODS, fractions=FRACTIONS, seeds=SEEDS, experiment="synthetic"):
    store = Store(out)
    for m in methods:
        for f in fractions:
            for s in seeds:
                rid = f"{m}-s{s}-{int(f * 10)}"
                cfg = {"name": experiment, "task": "classification", "dataset": {"name": "digits", "fraction": f},
                       "model": {"name": "mlp"}, "method": {"name": m}, "loss": {"name": "soft_ce"},
                       "train": {"epochs": 1}, "eval": {"selection": "final"}, "seed": s}
                store.write_run({"run_id": rid, "experiment": experiment, "method": m, "dataset": "digits",
                                 "model": "mlp", "loss": "soft_ce", "task": "classification", "seed": s,
                                 "status": "finished", "config": json.dumps(cfg), "selection": "final",
                                 "epochs": 1})
                a = acc_of(m, f, s)
                store.write_epochs(rid, [{"epoch": 1, "test_accuracy": a, "test_nll": nll_of(m, f, s),
                                          "test_ece": 1 - a, "test_worst_class_recall": a / 2,
                                          "test_mean_recall": a - 0.001}])
    return out


def expected(method, fraction, fn, percent):
    v = np.array([fn(method, fraction, s) for s in SEEDS]) * (100 if percent else 1)
    fmt = "{:.2f}" if percent else "{:.4f}"
    return fmt.format(v.mean()), fmt.format(v.std(ddof=1))


def latex_rows(tex: str) -> list[list[str]]:
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule")[0]
    return [[c.strip() for c in line.removesuffix("\\\\").split("&")]
            for line in body.strip().splitlines() if line.strip() != "\\midrule"]


def test_latex_table_booktabs_bold_best_and_caption(cli, tmp_path):
    out = fill(tmp_path / "res")
    code, tex = cli("compare", out, "--format", "latex", "--metric", "accuracy", "--metric", "nll")
    assert code == 0, tex
    for cmd in ("\\begin{tabular}{llrcc}", "\\toprule", "\\midrule", "\\bottomrule", "\\end{table}"):
        assert cmd in tex
    assert tex.count("\\begin{") == tex.count("\\end{") == 2 and tex.count("{") == tex.count("}")
    caption = re.search(r"\\caption\{(.*)\}\n", tex).group(1)
    assert "at the final epoch" in caption and "mean $\\pm$ std" in caption and "in bold" in caption
    rows = latex_rows(tex)
    assert len(rows) == 6 and all(len(r) == 5 for r in rows)  # method, fraction, n, accuracy, nll
    for method, frac, n, acc, nll in rows:
        assert n == "3"
        mean, std = expected(method, float(frac), acc_of, percent=True)
        assert acc.replace("\\mathbf", "").replace("{", "").replace("}", "") == f"${mean} \\pm {std}$"
        mean, std = expected(method, float(frac), nll_of, percent=False)
        assert nll.replace("\\mathbf", "").replace("{", "").replace("}", "") == f"${mean} \\pm {std}$"
    bold = [[("\\mathbf" in cell) for cell in r[3:]] for r in rows]
    assert [sum(col) for col in zip(*bold)] == [1, 1]  # one best per column
    best_acc = rows[[b[0] for b in bold].index(True)]
    assert best_acc[:2] == ["mixup", "0.6"]  # highest accuracy
    best_nll = rows[[b[1] for b in bold].index(True)]
    assert best_nll[:2] == ["mixup", "0.6"]  # lowest nll

    # --within: blocks separated by \midrule, one bold per column in each block
    code, tex = cli("compare", out, "--format", "latex", "--metric", "accuracy", "--within", "dataset.fraction")
    assert code == 0, tex
    body = tex.split("\\toprule")[1].split("\\bottomrule")[0]
    assert body.count("\\midrule") == 2  # under the header, between the two blocks
    rows = latex_rows(tex)
    bests = {r[1]: r[0] for r in rows if "\\mathbf" in r[3]}
    assert bests == {"0.3": "erm", "0.6": "mixup"}
    assert "within each dataset.fraction" in tex

    if shutil.which("pdflatex"):
        doc = tmp_path / "t.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + tex +
                       "\\end{document}\n")
        r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout[-2000:]


def test_latex_escapes_special_characters(tmp_path):
    out = fill(tmp_path / "res", experiment="abl_1 & 50%")
    tex = render(compare(out, metrics=["accuracy"]), "latex")
    assert "abl\\_1 \\& 50\\%" in tex


def test_compare_several_directories(cli, tmp_path):
    a = fill(tmp_path / "a", methods=("erm",))
    b = fill(tmp_path / "b", methods=("mixup", "cutmix"), experiment="other")
    both = fill(tmp_path / "both")
    code, text = cli("compare", a, b, "--format", "json", "--metric", "accuracy")
    assert code == 0, text
    split = json.loads(text)
    code, text = cli("compare", both, "--format", "json", "--metric", "accuracy")
    whole = json.loads(text)
    key = lambda g: (g["method"], g["dataset.fraction"])  # noqa: E731
    assert sorted(map(key, split["groups"])) == sorted(map(key, whole["groups"]))
    for g in split["groups"]:
        w = next(x for x in whole["groups"] if key(x) == key(g))
        assert g["accuracy"] == w["accuracy"] and g["n"] == w["n"] == 3
    assert "synthetic, other" in split["title"]
    # the same run in two directories counts once
    code, text = cli("compare", a, a, "--format", "json", "--metric", "accuracy")
    doc = json.loads(text)
    assert all(g["n"] == 3 for g in doc["groups"]) and "counted once" in doc["notes"][0]
    code, text = cli("compare", a, tmp_path / "missing")
    assert code == 2 and "missing: no results here" in text


def test_within_errors(cli, tmp_path):
    out = fill(tmp_path / "res")
    code, text = cli("compare", out, "--within", "dataset.fractoin")
    assert code == 2 and "--within dataset.fractoin" in text and "did you mean 'dataset.fraction'" in text
    code, text = cli("compare", out, "--by", "method", "--within", "method")
    assert code == 2 and "only grouping key" in text


def _printed(renderable, width: int, color: bool) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system="truecolor" if color else None, force_terminal=color,
            legacy_windows=False).print(renderable)
    return buf.getvalue()


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.mark.parametrize("by", [["method", "dataset.fraction"], ["method", "dataset.fraction", "train.epochs"]])
def test_table_fits_80_columns_without_breaking_numbers_or_words(tmp_path, by):
    c = compare(fill(tmp_path / "res"), by=by)  # the 5 default classification metrics
    text = _printed(render(c, "table", width=80, color=False), 80, color=False)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    # every mean±std is whole on one line, and the group labels break only between words
    nums = re.findall(r"\d+\.\d+±\d+\.\d+\*?", text)
    assert len(c.metrics) == 5 and len(nums) == 6 * len(c.metrics)
    for method in METHODS:
        assert method in text.split()
    for f in FRACTIONS:
        assert str(f) in text.replace("fraction=", " ").split()
    # abbreviated names, explained in the caption; best marked with a character, as the caption says
    assert "acc % ↑" in text and "acc = accuracy" in " ".join(text.split())
    assert "marked *" in text and "bold" not in text
    starred = [n for n in nums if n.endswith("*")]
    assert len(starred) == len(c.metrics)
    mean, std = expected("mixup", 0.6, acc_of, percent=True)
    assert f"{mean}±{std}*" in starred


def test_table_at_120_columns_with_colour_keeps_full_names_and_bold(tmp_path):
    c = compare(fill(tmp_path / "res"), metrics=["accuracy", "nll"])
    text = _printed(render(c, "table", width=120, color=True), 120, color=True)
    assert max(len(line) for line in _plain(text).splitlines()) <= 120
    assert "accuracy % ↑" in text and "in bold green" in text and "*" not in _plain(text)
    mean, std = expected("mixup", 0.6, acc_of, percent=True)
    assert re.search(r"\x1b\[[0-9;]*1[;m][^ ]*" + re.escape(f"{mean} ± {std}"), text)  # bold escape before it


def test_compare_piped_marks_best_with_a_character(cli, tmp_path):
    code, text = cli("compare", fill(tmp_path / "res"), "--metric", "accuracy")
    assert code == 0, text
    assert "marked *" in text and "bold" not in text and text.count("*") == 2  # the cell and the caption


def test_help_and_compare_start_without_torch(tmp_path):
    out = fill(tmp_path / "res")
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from mixcli.cli import app\n"
            "for args in (['--help'], ['compare', sys.argv[1]], ['status', sys.argv[1]]):\n"
            "    r = CliRunner().invoke(app, args)\n"
            "    assert r.exit_code == 0, r.output\n"
            "print('torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
