"""The ``tensorboard`` logger: TensorBoard event files per run."""
from __future__ import annotations

import json
from pathlib import Path

from mixcli.api import Logger, PluginError
from mixcli.api import scalars


def tag_of(column: str) -> str:
    """An epochs column as a TensorBoard tag: ``train_loss`` -> ``train/loss``, ``test_accuracy`` ->
    ``test/accuracy``, ``lr`` -> ``train/lr``, ``time_s`` -> ``train/time_s``."""
    head, _, rest = column.partition("_")
    if head in ("train", "val", "test") and rest:
        return f"{head}/{rest}"
    return f"train/{column}"


def _hvalue(text: str):
    """A grid value for HParams: a number when it reads as one (so that the view can sort and plot it)."""
    try:
        return float(text)
    except ValueError:
        return text


class TensorBoard(Logger):
    """TensorBoard: event files per run under OUT/tensorboard/<run_id> (scalars per epoch, config as text).

    Scalars: every ``epochs`` column at step = epoch, as ``train/loss``, ``train/lr``, ``val/accuracy``,
    ``test/nll``, ...; ``step/loss`` and ``step/lr`` per optimizer step with ``train.log_steps``; the runs row's ``final_*``/``best_*`` as ``summary/...`` at the last epoch. Text:
    the resolved configuration (``config``) and the tags (``tags``). PNGs of the run as images. HParams (the
    HPARAMS tab): each run's method, seed and grid values (``grid.<key>``) with its ``summary/final_*`` and
    ``summary/best_*`` metrics. Another root directory by ``log: {tensorboard: DIR}`` or
    ``--log tensorboard=DIR``."""

    def __init__(self, out: Path, uri: str | None = None) -> None:
        super().__init__(out, uri)
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401 (needs the tensorboard package)
        except ImportError:
            raise PluginError('needs TensorBoard: pip install "mixcli[tensorboard]"') from None
        self.root = Path(uri) if uri else self.out / "tensorboard"
        self._writers: dict = {}
        self._last: dict[str, int] = {}
        self._hparams: dict[str, dict] = {}

    def exists(self, run: dict) -> bool:
        d = self.root / str(run["run_id"])
        return d.is_dir() and any(d.glob("events.out.tfevents.*"))

    def start(self, run: dict, tags: dict[str, str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        rid = str(run["run_id"])
        w = self._writers[rid] = SummaryWriter(log_dir=str(self.root / rid))
        cfg = json.dumps(json.loads(run["config"]), indent=2)
        w.add_text("config", "\n".join("    " + line for line in cfg.splitlines()))
        w.add_text("tags", "\n\n".join(f"{k}: {v}" for k, v in tags.items()))
        hp = {"name": tags.get("mixcli.name", rid), "method": str(run["method"]), "seed": int(run["seed"])}
        hp.update({k: _hvalue(v) for k, v in tags.items() if k.startswith("grid.")})
        self._hparams[rid] = hp

    def epoch(self, run_id: str, row: dict) -> None:
        w, step = self._writers[run_id], int(row["epoch"])
        for k, v in scalars(row).items():
            w.add_scalar(tag_of(k), v, step)
        self._last[run_id] = step

    def steps(self, run_id: str, rows: list[dict]) -> None:
        w = self._writers[run_id]
        for r in rows:
            w.add_scalar("step/loss", r["loss"], int(r["step"]))
            w.add_scalar("step/lr", r["lr"], int(r["step"]))

    def end(self, run: dict, files: list[Path]) -> None:
        rid = str(run["run_id"])
        w = self._writers.pop(rid)
        step = self._last.pop(rid, 0)
        summary = {f"summary/{k}": v for k, v in scalars(run).items() if k.startswith(("final_", "best_"))}
        for k, v in summary.items():
            w.add_scalar(k, v, step)
        hp = self._hparams.pop(rid, None)
        if hp is not None and summary:
            from torch.utils.tensorboard.summary import hparams

            for s in hparams(hp, summary):  # into this run's own directory: one HParams session per run
                w.file_writer.add_summary(s)
        for f in files:
            if f.suffix == ".png":
                import matplotlib.image as mpimg

                w.add_image(f.stem, mpimg.imread(f)[..., :3], step, dataformats="HWC")
        w.close()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()
