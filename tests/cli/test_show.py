"""`mixcli show`: the resolved configuration of each job, equal to the config.yaml a run saves; grid
entries addressable by --set."""
from __future__ import annotations

import yaml

from conftest import TINY

GRID = TINY.replace("epochs: 3", "epochs: 1") + """\
grid:
  method: [erm, {name: mixup, alpha: 0.4}]
  dataset.fraction: [0.3]
"""


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def test_show_prints_each_jobs_config_as_saved_by_run(cli, write, tmp_path):
    exp, out = write(GRID), tmp_path / "out"
    code, shown = cli("show", exp)
    assert code == 0, shown
    docs = _docs(shown)
    assert [d["method"]["name"] for d in docs] == ["erm", "mixup"]
    assert all(d["dataset"]["fraction"] == 0.3 for d in docs)
    code, text = cli("run", exp, "--out", out, "--device", "cpu")
    assert code == 0, text
    saved = {p.parent.name: (p.read_text(), yaml.safe_load(p.read_text())) for p in out.glob("jobs/*/config.yaml")}
    assert len(saved) == 2
    # each document is headed by a comment naming its run id; the YAML equals the saved file
    for chunk in shown.split("---\n"):
        head, _, body = chunk.partition("\n")
        rid = head.removeprefix("# ").split(":")[0]
        assert body == saved[rid][0] and yaml.safe_load(body) == saved[rid][1]

    code, one = cli("show", exp, "--job", "2")
    assert code == 0 and _docs(one) == [docs[1]]
    rid = next(r for r in saved if r.startswith("mixup"))
    code, one = cli("show", exp, "--job", rid[:8])
    assert code == 0 and _docs(one) == [saved[rid][1]]


def test_show_job_errors(cli, write):
    exp = write(GRID)
    code, text = cli("show", exp, "--job", "3")
    assert code == 2 and "--job 3: expected a job number from 1 to 2" in text
    code, text = cli("show", exp, "--job", "nope")
    assert code == 2 and "--job nope: is no run id of this experiment" in text
    code, text = cli("show", exp, "--set", "train.epochs=0")
    assert code == 2 and "train.epochs" in text and "Traceback" not in text


def test_set_addresses_grid_entries_whole(cli, write):
    exp = write(GRID)
    code, text = cli("show", exp, "--set", "grid.dataset.fraction=[0.1, 0.2]", "--set", "grid.method=[erm]")
    assert code == 0, text
    docs = _docs(text)
    assert [(d["method"]["name"], d["dataset"]["fraction"]) for d in docs] == [("erm", 0.1), ("erm", 0.2)]
    # a new axis
    code, text = cli("show", exp, "--set", "grid.train.optimizer.lr=[0.1, 0.01]")
    assert code == 0 and sorted(d["train"]["optimizer"]["lr"] for d in _docs(text)) == [0.01, 0.01, 0.1, 0.1]
    # run and validate see the same jobs as show
    code, text = cli("validate", exp, "--set", "grid.method=[erm, cutmix, mixup]")
    assert code == 0 and "3 job(s)" in text
    # errors in an overridden grid name the override
    code, text = cli("validate", exp, "--set", "grid.method=[erm, mixupp]")
    assert code == 2 and "--set grid.method" in text and "did you mean 'mixup'" in text
    # a grid written as a list of mappings has no single entry to address
    lst = write(TINY + "grid:\n  - {method: [erm]}\n  - {method: [mixup]}\n", "list.yaml")
    code, text = cli("show", lst, "--set", "grid.method=[erm]")
    assert code == 2 and "replace the whole grid" in text
    code, text = cli("show", lst, "--set", "grid=[{method: [cutmix]}]")
    assert code == 0 and [d["method"]["name"] for d in _docs(text)] == ["cutmix"]
