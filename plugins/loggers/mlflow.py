"""The ``mlflow`` logger: one MLflow run per mixcli run."""
from __future__ import annotations

import json
import time
from pathlib import Path

from mixcli.api import Logger, PluginError
from mixcli.api import scalars

SUMMARY = ("final_", "best_")  # runs-row columns logged once at the end
PROVENANCE = ("git_commit", "git_dirty", "host", "gpu", "device", "torch_version", "cuda_version",
              "mixcli_version", "plugin_versions")


class MLflow(Logger):
    """MLflow: a run per job with its resolved config as params, per-epoch metrics, tags and artifacts.

    Params: the resolved configuration, flattened to dotted keys (``train.optimizer.lr``). Metrics: the
    ``epochs`` columns at step = epoch (``train_loss``, ``lr``, ``test_accuracy``, ...), and the runs row's
    ``final_*``/``best_*`` once at the end; with ``train.log_steps``, ``step_loss`` and ``step_lr`` at step =
    optimizer step. Tags: experiment, method, seed, ``mixcli.run_id``, the grid
    values (``grid.<key>``) and the provenance columns (``mixcli.git_commit``, ...). Artifacts: config.yaml
    and the run's PNGs. Default store: ``sqlite:///OUT/mlflow.db`` with artifacts under ``OUT/mlartifacts``;
    any tracking URI by ``log: {mlflow: URI}`` or ``--log mlflow=URI`` (for a ``sqlite:///`` URI the
    artifacts go to ``mlartifacts`` beside the database, for a server where it decides). A resumed run continues its MLflow
    run (found by the ``mixcli.run_id`` tag)."""

    def __init__(self, out: Path, uri: str | None = None) -> None:
        super().__init__(out, uri)
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise PluginError('needs MLflow: pip install "mixcli[mlflow]"') from None
        self._client = None
        self._runs: dict[str, str] = {}
        self._experiments: dict[str, str] = {}

    @property
    def tracking_uri(self) -> str:
        return self.uri or f"sqlite:///{(self.out / 'mlflow.db').resolve()}"

    def artifact_root(self) -> str | None:
        """Where new experiments keep their artifacts: beside a local sqlite database (``OUT/mlartifacts``
        by default), else where the tracking server decides (None)."""
        if self.uri is None:
            return (self.out / "mlartifacts").resolve().as_uri()
        if self.uri.startswith("sqlite:///"):
            return (Path(self.uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
        return None

    def client(self):
        if self._client is None:
            import logging

            from mlflow.tracking import MlflowClient

            for name in ("mlflow", "alembic"):  # no INFO lines about creating the database
                logging.getLogger(name).setLevel(logging.WARNING)

            self.out.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def experiment_id(self, name: str) -> str:
        if name not in self._experiments:
            from mlflow.exceptions import MlflowException

            c = self.client()
            exp = c.get_experiment_by_name(name)
            if exp is None:
                where = self.artifact_root()
                try:
                    self._experiments[name] = c.create_experiment(name, artifact_location=where)
                except MlflowException:  # created meanwhile by another worker
                    self._experiments[name] = c.get_experiment_by_name(name).experiment_id
            else:
                self._experiments[name] = exp.experiment_id
        return self._experiments[name]

    def find(self, run: dict) -> str | None:
        """The MLflow run id of the mixcli run ``run``, if the store has it."""
        found = self.client().search_runs([self.experiment_id(str(run["experiment"]))],
                                          filter_string=f"tags.`mixcli.run_id` = '{run['run_id']}'",
                                          max_results=1)
        return found[0].info.run_id if found else None

    def exists(self, run: dict) -> bool:
        return self.find(run) is not None

    def start(self, run: dict, tags: dict[str, str]) -> None:
        from mlflow.entities import Param

        c = self.client()
        mid = self.find(run)
        if mid is None:
            prov = {f"mixcli.{k}": str(run[k]) for k in PROVENANCE if run.get(k) is not None and run[k] == run[k]}
            mid = c.create_run(self.experiment_id(str(run["experiment"])), run_name=str(run["run_id"]),
                               tags={**tags, **prov}).info.run_id
            params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                      for k, v in _flatten(json.loads(run["config"])).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                c.log_batch(mid, params=params[i:i + 100])
        else:
            c.update_run(mid, status="RUNNING")
        self._runs[str(run["run_id"])] = mid

    def epoch(self, run_id: str, row: dict) -> None:
        from mlflow.entities import Metric

        ts, step = int(time.time() * 1000), int(row["epoch"])
        self.client().log_batch(self._runs[run_id],
                                metrics=[Metric(k, v, ts, step) for k, v in scalars(row).items()])

    def steps(self, run_id: str, rows: list[dict]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics = [Metric(f"step_{k}", float(r[k]), ts, int(r["step"])) for r in rows for k in ("loss", "lr")]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client().log_batch(self._runs[run_id], metrics=metrics[i:i + 1000])

    def end(self, run: dict, files: list[Path]) -> None:
        from mlflow.entities import Metric

        mid = self._runs.pop(str(run["run_id"]))
        c = self.client()
        ts = int(time.time() * 1000)
        summary = {k: v for k, v in scalars(run).items() if k.startswith(SUMMARY)}
        if summary:
            c.log_batch(mid, metrics=[Metric(k, v, ts, 0) for k, v in summary.items()])
        for f in files:
            c.log_artifact(mid, str(f))
        c.set_terminated(mid, status={"finished": "FINISHED", "interrupted": "KILLED"}.get(run.get("status"), "FAILED"))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, dict) else {key: v})
    return out
