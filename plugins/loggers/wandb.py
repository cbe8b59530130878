"""The ``wandb`` logger: one Weights & Biases run per mixcli run, offline unless the user is logged in."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from mixcli.api import Logger, PluginError
from mixcli.api import scalars

SUMMARY_COLUMNS = ("best_epoch", "best_on", "wall_time_s", "epochs")


def logged_in() -> bool:
    """Whether W&B has an API key here (``WANDB_API_KEY``, or ``wandb login``'s entry in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def run_key(run_id: str) -> str:
    """A mixcli run id as a W&B run id (letters, digits, ``-`` and ``_``; at most 64)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", run_id)[:64]


class WandB(Logger):
    """Weights & Biases: a run per job, offline by default (no network here or on many clusters).

    Mode: ``WANDB_MODE`` when set, else ``online`` when W&B has an API key (``wandb login`` or
    ``WANDB_API_KEY``), else ``offline``: the runs are written under ``OUT/wandb/`` and ``wandb sync
    OUT/wandb/offline-run-*`` uploads them later. Project: the destination (``--log wandb=[ENTITY/]PROJECT``),
    by default the experiment's name. Run: named like the job (``mixup alpha=0.4 s1``), id = the run id
    (a resumed run continues it), ``group`` = that name without the seed (W&B draws a grid point's seeds as
    one mean curve), ``job_type`` = the method, tags: experiment, method, ``seed=N``. Config: the resolved
    configuration, with ``grid`` (the grid values) and ``mixcli`` (run id, provenance). History: every epochs
    column against ``epoch``; with ``train.log_steps``, ``step/loss`` and ``step/lr`` against
    ``optimizer_step``. Summary: the runs row's ``final_*``/``best_*``, best epoch and wall time."""

    def __init__(self, out: Path, uri: str | None = None) -> None:
        super().__init__(out, uri)
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise PluginError('needs W&B: pip install "mixcli[wandb]"') from None
        self._runs: dict = {}

    def mode(self) -> str:
        return os.environ.get("WANDB_MODE") or ("online" if logged_in() else "offline")

    def prepare(self, experiments: list[str]) -> None:
        """Online: W&B's server answers within 3 s (else the sweep logs without W&B, one warning line)."""
        if self.mode() != "online":
            return
        import urllib.error
        import urllib.request

        base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")
        try:
            urllib.request.urlopen(base, timeout=3).close()
        except urllib.error.HTTPError:
            return  # it answered
        except OSError as exc:
            raise ConnectionError(f"{base} cannot be reached ({getattr(exc, 'reason', exc)}); "
                                  "WANDB_MODE=offline logs offline") from None

    def project(self, run: dict) -> tuple[str | None, str]:
        if self.uri:
            entity, _, project = self.uri.rpartition("/")
            return entity or None, project
        return None, str(run["experiment"])

    def root(self) -> Path:
        return Path(os.environ.get("WANDB_DIR") or self.out)

    def exists(self, run: dict) -> bool:
        d = self.root() / "wandb"
        return any(d.glob(f"*-{run_key(str(run['run_id']))}/*.wandb")) if d.is_dir() else False

    def start(self, run: dict, tags: dict[str, str]) -> None:
        import wandb

        rid = str(run["run_id"])
        name = tags.get("mixcli.name") or rid
        entity, project = self.project(run)
        cfg = json.loads(run["config"])
        cfg["grid"] = {k[len("grid."):]: v for k, v in tags.items() if k.startswith("grid.")}
        cfg["mixcli"] = {k.split(".", 1)[-1]: v for k, v in tags.items() if k.startswith("mixcli.")}
        mode = self.mode()
        self.root().mkdir(parents=True, exist_ok=True)
        r = wandb.init(entity=entity, project=project, name=name, id=run_key(rid), group=tags.get("mixcli.group"),
                       job_type=str(run["method"]), tags=[str(run["experiment"]), str(run["method"]),
                                                          f"seed={run['seed']}"],
                       config=cfg, dir=str(self.root()), mode=mode, reinit="create_new",
                       resume="allow" if mode == "online" else None,
                       settings=wandb.Settings(silent=True, console="off", x_disable_stats=True,
                                               disable_git=True, save_code=False))
        r.define_metric("epoch")
        r.define_metric("*", step_metric="epoch")
        r.define_metric("optimizer_step")
        r.define_metric("step/*", step_metric="optimizer_step")
        self._runs[rid] = r

    def epoch(self, run_id: str, row: dict) -> None:
        self._runs[run_id].log({**scalars(row), "epoch": int(row["epoch"])})

    def steps(self, run_id: str, rows: list[dict]) -> None:
        r = self._runs[run_id]
        for s in rows:
            r.log({"optimizer_step": int(s["step"]), "step/loss": float(s["loss"]), "step/lr": float(s["lr"])})

    def end(self, run: dict, files: list[Path]) -> None:
        r = self._runs.pop(str(run["run_id"]))
        summary = {k: v for k, v in scalars(run).items() if k.startswith(("final_", "best_"))}
        summary.update({k: run[k] for k in SUMMARY_COLUMNS if run.get(k) is not None and run[k] == run[k]})
        summary["status"] = str(run.get("status"))
        r.summary.update(summary)
        r.finish(exit_code=0 if run.get("status") == "finished" else 1)

    def close(self) -> None:
        for r in self._runs.values():
            r.finish(exit_code=1)
        self._runs.clear()
