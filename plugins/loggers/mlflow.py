"""The ``mlflow`` logger: one MLflow run per mixcli run."""
from __future__ import annotations

import contextlib
import json
import os
import random
import time
from datetime import datetime
from pathlib import Path

from mixcli.api import Logger, PluginError
from mixcli.api import scalars

SUMMARY = ("final_", "best_")  # runs-row columns kept as the run's summary (tags), not as metrics
SUMMARY_COLUMNS = ("best_epoch", "best_on", "wall_time_s", "epochs")
#: how long one request to a tracking server may take, unless the user set these (MLflow's defaults retry
#: for minutes): a server that went away costs seconds
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
LOCKED = ("database is locked", "database table is locked")
CHECK_S = 3.0  # the reachability check of a tracking server
PROVENANCE = ("git_commit", "git_dirty", "host", "gpu", "device", "torch_version", "cuda_version",
              "mixcli_version", "plugin_versions")


class MLflow(Logger):
    """MLflow: a run per job with its resolved config as params, per-epoch metrics, tags and artifacts.

    Params: the resolved configuration, flattened to dotted keys (``train.optimizer.lr``). Metrics: the
    ``epochs`` columns at step = epoch (``train_loss``, ``lr``, ``test_accuracy``, ...; their latest values are
    the final ones); with ``train.log_steps``, ``step_loss`` and ``step_lr`` at step =
    optimizer step. Tags: experiment, method, seed, ``mixcli.run_id``, the grid
    values (``grid.<key>``), ``mixcli.name``/``mixcli.group`` (the run's name, e.g. ``mixup alpha=0.4 s1``,
    and without the seed), the provenance columns (``mixcli.git_commit``, ...) and, at the end, the summary
    (``summary.best_test_accuracy``, ``summary.final_*``, ``summary.best_epoch``, ``summary.wall_time_s``).
    Run name: ``mixcli.name``; start and end times: the run's own (``started_at``, ``finished_at``). Artifacts: config.yaml
    and the run's PNGs. Default store: ``sqlite:///OUT/mlflow.db`` with artifacts under ``OUT/mlartifacts``;
    any tracking URI by ``log: {mlflow: URI}`` or ``--log mlflow=URI`` (for a ``sqlite:///`` URI the
    artifacts go to ``mlartifacts`` beside the database, for a server where it decides). A resumed run continues its MLflow
    run (found by the ``mixcli.run_id`` tag).

    Many workers, processes or hosts may log to one store: a sqlite store is created and migrated once,
    under a file lock beside it (``mlflow.db.lock``), by the sweep's driver (:meth:`prepare`); a write that
    meets "database is locked" is retried. A tracking server is checked within seconds before the sweep and
    when each run starts; its requests time out after 10 s (``MLFLOW_HTTP_REQUEST_TIMEOUT``)."""

    def __init__(self, out: Path, uri: str | None = None) -> None:
        super().__init__(out, uri)
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise PluginError('needs MLflow: pip install "mixcli[mlflow]"') from None
        self._client = None
        self._runs: dict[str, str] = {}
        self._experiments: dict[str, str] = {}
        self._clock: dict[str, int | None] = {}
        self._locked = False

    @property
    def tracking_uri(self) -> str:
        return self.uri or f"sqlite:///{(self.out / 'mlflow.db').resolve()}"

    def database(self) -> Path | None:
        """The sqlite file of a ``sqlite:///`` store (the default), else None."""
        uri = self.tracking_uri
        return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None

    def artifact_root(self) -> str | None:
        """Where new experiments keep their artifacts: beside a local sqlite database (``OUT/mlartifacts``
        by default), else where the tracking server decides (None)."""
        db = self.database()
        return (db.resolve().parent / "mlartifacts").as_uri() if db is not None else None

    @contextlib.contextmanager
    def locked(self):
        """An exclusive lock on a sqlite store (its creation and migration happen once, whoever comes first);
        nothing for a server."""
        db = self.database()
        if db is None or self._locked:  # (held already by this logger: flock is not reentrant)
            yield
            return
        import fcntl

        db.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(db.with_name(db.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)  # not a planted link
        with os.fdopen(fd, "r+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            self._locked = True
            try:
                yield
            finally:
                self._locked = False
                fcntl.flock(fh, fcntl.LOCK_UN)

    def check(self) -> None:
        """A tracking server answers within :data:`CHECK_S` seconds (any HTTP answer will do)."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return
        import socket
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(self.tracking_uri.rstrip("/") + "/health", timeout=CHECK_S).close()
        except urllib.error.HTTPError:
            return  # it answered
        except (urllib.error.URLError, OSError, socket.timeout) as exc:
            why = getattr(exc, "reason", exc)
            why = "no answer within %gs" % CHECK_S if isinstance(why, (socket.timeout, TimeoutError)) else why
            raise ConnectionError(f"{self.tracking_uri} cannot be reached ({why})") from None

    def client(self):
        if self._client is None:
            import logging

            for name in ("mlflow", "alembic"):  # no INFO lines about creating the database
                logging.getLogger(name).setLevel(logging.WARNING)
            for k, v in HTTP_ENV.items():
                os.environ.setdefault(k, v)
            self.check()
            from mlflow.tracking import MlflowClient

            self.out.mkdir(parents=True, exist_ok=True)
            with self.locked():  # a new store is created and migrated here, by one process at a time
                c = MlflowClient(tracking_uri=self.tracking_uri)
                self.call(c.search_experiments, max_results=1)
            self._client = c
        return self._client

    def call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, again after a pause while a sqlite store answers "database is locked"
        (another process writes; about 30 s in all before it gives up)."""
        delay, waited = 0.05, 0.0
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - only the lock is retried
                if not any(s in str(exc) for s in LOCKED) or waited > 30:
                    raise
            pause = delay * (1 + random.random())
            time.sleep(pause)
            waited += pause
            delay = min(2 * delay, 1.0)

    def prepare(self, experiments: list[str]) -> None:
        """In the sweep's driver: the store exists, migrated, with the sweep's experiments (under the lock,
        so that other processes starting sweeps on the same store wait instead of racing)."""
        with self.locked():
            self.client()
            for name in experiments:
                self.experiment_id(name)

    def experiment_id(self, name: str) -> str:
        if name not in self._experiments:
            from mlflow.exceptions import MlflowException

            c = self.client()
            exp = self.call(c.get_experiment_by_name, name)
            if exp is None:
                where = self.artifact_root()
                try:
                    self._experiments[name] = self.call(c.create_experiment, name, artifact_location=where)
                except MlflowException:  # created meanwhile by another worker
                    self._experiments[name] = self.call(c.get_experiment_by_name, name).experiment_id
            else:
                self._experiments[name] = exp.experiment_id
        return self._experiments[name]

    def find(self, run: dict) -> str | None:
        """The MLflow run id of the mixcli run ``run``, if the store has it."""
        found = self.call(self.client().search_runs, [self.experiment_id(str(run["experiment"]))],
                          filter_string=f"tags.`mixcli.run_id` = '{run['run_id']}'", max_results=1)
        return found[0].info.run_id if found else None

    def exists(self, run: dict) -> bool:
        return self.find(run) is not None

    def start(self, run: dict, tags: dict[str, str]) -> None:
        """Live (``run["status"]`` is running) or exported (a finished row: its metrics are stamped with the
        run's own clock, from ``started_at`` plus each epoch's ``time_s``)."""
        from mlflow.entities import Param

        c = self.client()
        rid, name = str(run["run_id"]), tags.get("mixcli.name") or str(run["run_id"])
        self.check()
        mid = self.find(run)
        exported = run.get("status") != "running"
        started = _ms(run.get("started_at")) if exported else None  # live: now, to the millisecond
        if mid is None:
            prov = {f"mixcli.{k}": str(run[k]) for k in PROVENANCE if run.get(k) is not None and run[k] == run[k]}
            mid = self.call(c.create_run, self.experiment_id(str(run["experiment"])), run_name=name,
                            start_time=started, tags={**tags, **prov}).info.run_id
            params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                      for k, v in _flatten(json.loads(run["config"])).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.call(c.log_batch, mid, params=params[i:i + 100])
        else:
            self.call(c.update_run, mid, status="RUNNING", name=name)
        self._runs[rid] = mid
        self._clock[rid] = started if exported and started else None

    def _stamp(self, run_id: str, row: dict | None = None) -> int:
        """Milliseconds for a metric: now while a run trains; the run's own clock in an export."""
        t = self._clock.get(run_id)
        if t is None:
            return int(time.time() * 1000)
        if row is not None and row.get("time_s") == row.get("time_s") and row.get("time_s") is not None:
            t += int(1000 * float(row["time_s"]))
            self._clock[run_id] = t
        return t

    def epoch(self, run_id: str, row: dict) -> None:
        from mlflow.entities import Metric

        ts, step = self._stamp(run_id, row), int(row["epoch"])
        self.call(self.client().log_batch, self._runs[run_id],
                  metrics=[Metric(k, v, ts, step) for k, v in scalars(row).items()])

    def steps(self, run_id: str, rows: list[dict]) -> None:
        from mlflow.entities import Metric

        ts = self._stamp(run_id)
        metrics = [Metric(f"step_{k}", float(r[k]), ts, int(r["step"])) for r in rows for k in ("loss", "lr")]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.call(self.client().log_batch, self._runs[run_id], metrics=metrics[i:i + 1000])

    def end(self, run: dict, files: list[Path]) -> None:
        """The summary (``final_*``, ``best_*``, best epoch, wall time) as ``summary.*`` tags, not metrics:
        the metrics are the per-epoch series, whose latest values are the final ones. The end time is the
        run's ``finished_at`` (now for a run that did not finish)."""
        from mlflow.entities import RunTag

        rid = str(run["run_id"])
        mid = self._runs.pop(rid)
        exported = self._clock.pop(rid, None) is not None
        c = self.client()
        summary = {k: v for k, v in scalars(run).items() if k.startswith(SUMMARY)}
        summary.update({k: run[k] for k in SUMMARY_COLUMNS if run.get(k) is not None and run[k] == run[k]})
        if summary:
            self.call(c.log_batch, mid, tags=[RunTag(f"summary.{k}", f"{v:.6g}" if isinstance(v, float) else str(v))
                                              for k, v in summary.items()])
        for f in files:
            self.call(c.log_artifact, mid, str(f))
        status = {"finished": "FINISHED", "interrupted": "KILLED"}.get(run.get("status"), "FAILED")
        ended = _ms(run.get("finished_at")) if exported and status == "FINISHED" else None
        self.call(c.set_terminated, mid, status=status, end_time=ended or int(time.time() * 1000))


def _ms(iso) -> int | None:
    """An ISO time of the runs table (``started_at``, ``finished_at``) in epoch milliseconds."""
    if not isinstance(iso, str) or not iso:
        return None
    try:
        return int(datetime.fromisoformat(iso).timestamp() * 1000)
    except ValueError:
        return None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, dict) else {key: v})
    return out
