"""The ``mixcli`` command line: run, compare, list, validate."""
from __future__ import annotations

import functools
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .api import PluginError
from .errors import MixcliError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Run mixup experiments described in YAML, record them as parquet, compare them.")
console = Console()
err = Console(stderr=True)

# options shared by the report commands (compare, curves)
ResultsDir = Annotated[Path, typer.Argument(help="An output directory holding runs/ and epochs/.")]
ByOption = Annotated[Optional[List[str]], typer.Option(
    "--by", help="Group by this column or dotted config key (repeatable; default: method plus the keys that vary).")]


def user_errors(fn):
    """Bad input -> one clear message on stderr and exit code 2, no traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (MixcliError, PluginError) as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


# ----------------------------------------------------------------------------------------------------- run
class RichProgress:
    """Job k of N, epoch, live loss and accuracy, as rich progress bars."""

    def __init__(self, progress: Progress, n_jobs: int) -> None:
        self.p, self.n = progress, n_jobs
        self.overall = progress.add_task("jobs", total=n_jobs, info="")
        self.task = None
        self.k = 0

    def start(self, job, epochs: int, steps: int, start_epoch: int) -> None:
        self.job, self.epochs, self.metric = job, epochs, None
        desc = f"[{self.k}/{self.n}] {job.label}"
        if self.task is not None:
            self.p.remove_task(self.task)
        self.task = self.p.add_task(desc, total=epochs * steps, completed=(start_epoch - 1) * steps,
                                    info=f"epoch {start_epoch}/{epochs}")

    def step(self) -> None:
        self.p.advance(self.task)

    def epoch(self, epoch: int, row: dict) -> None:
        bits = [f"epoch {epoch}/{self.epochs}", f"loss {row['train_loss']:.3f}"]
        if "test_accuracy" in row:
            bits.append(f"test acc {100 * row['test_accuracy']:.2f}%")
        if "test_rmse" in row:
            bits.append(f"test rmse {row['test_rmse']:.4g}")
        self.p.update(self.task, info=" · ".join(bits))


@app.command()
@user_errors
def run(
    experiment: Path = typer.Argument(..., help="The experiment YAML file."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a key before validation, e.g. "
                                             "--set train.epochs=5 (repeatable; values are YAML)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: the file's 'out:' key, "
                                       "else results/<name>)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the jobs and exit without training."),
) -> None:
    """Run every job of an experiment (skipping finished runs, resuming interrupted ones), then compare."""
    from .engine import pick_device, record_failure, run_job
    from .finetune import with_parents
    from .jobs import expand
    from .report import compare, render
    from .spec import load_experiment
    from .store import Store

    exp = load_experiment(experiment, set_ or [])
    if out is not None:
        exp.out = out
    targets = expand(exp)
    jobs = with_parents(targets)  # jobs fine-tuned from another experiment's runs need those first
    if dry_run:
        t = Table(title=f"{exp.name}: {len(jobs)} job(s) -> {exp.out}")
        for col in ("#", "run_id", "method", "dataset", "model", "seed", "grid values"):
            t.add_column(col, no_wrap=col == "run_id", overflow="fold")
        for i, j in enumerate(jobs, 1):
            c = j.config
            t.add_row(str(i), j.run_id, c["method"]["name"], c["dataset"]["name"], c["model"]["name"],
                      str(c["seed"]), (j.label.rpartition(" seed=")[0] if j.grid_values else "") +
                      ("" if j.out == exp.out else f" (init_from parent -> {j.out})"))
        console.print(t)
        return
    dev = pick_device(device)
    stores = {}
    console.print(f"[bold]{exp.name}[/]: {len(jobs)} job(s) on {dev} -> {exp.out}")
    failed = []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as p:
        rp = RichProgress(p, len(jobs))
        for k, job in enumerate(jobs, 1):
            rp.k = k
            store = stores[job.out] = stores.get(job.out) or Store(job.out)
            prev = store.run_row(job.run_id)
            if prev is not None and prev.get("status") == "finished":
                p.console.print(f"  [dim][{k}/{len(jobs)}] {job.run_id}: already finished, skipped[/]")
                p.advance(rp.overall)
                continue
            t0 = time.perf_counter()
            try:
                row = run_job(job, store, dev, rp)
            except (MixcliError, PluginError) as exc:
                record_failure(job, store, dev, str(exc))
                raise
            except KeyboardInterrupt:
                p.console.print(f"[yellow]interrupted during {job.run_id}; run the same command again to "
                                "resume from its last finished epoch[/]")
                raise typer.Exit(130) from None
            except Exception as exc:  # a bug or a numerical failure in one job: record it, go on
                msg = f"{type(exc).__name__}: {exc}"
                record_failure(job, store, dev, msg)
                failed.append(job.run_id)
                p.console.print(f"[red][{k}/{len(jobs)}] {job.run_id} failed: {msg}[/]")
                p.console.print(traceback.format_exc(), markup=False, highlight=False)
                p.advance(rp.overall)
                continue
            acc = row.get("final_test_accuracy")
            rmse = row.get("final_test_rmse")
            score = f"test acc {100 * acc:.2f}%" if acc == acc and acc is not None else \
                f"test rmse {rmse:.4g}" if rmse is not None and rmse == rmse else ""
            p.console.print(f"  [green]✓[/] [{k}/{len(jobs)}] {job.run_id}  {score}  "
                            f"({time.perf_counter() - t0:.1f}s)")
            p.advance(rp.overall)
    cmp = compare(exp.out, run_ids=[j.run_id for j in targets])
    console.print(render(cmp, "table"))
    console.print(f"results: {exp.out}/runs, {exp.out}/epochs (parquet); `mixcli compare {exp.out}` for more views")
    if failed:
        err.print(f"[red]{len(failed)} run(s) failed: {', '.join(failed)}[/]")
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------- compare
@app.command()
@user_errors
def compare(
    directory: ResultsDir = Path("results"),
    by: ByOption = None,
    metric: Optional[List[str]] = typer.Option(None, "--metric", help="Metric column to show (repeatable; "
                                               "default: the task's standard set)."),
    fmt: str = typer.Option("table", "--format", help="table, markdown, csv or json."),
    select: Optional[str] = typer.Option(None, "--select", help="Epoch selection rule: final, best "
                                         "(best val epoch, else best test epoch) or median_last10 "
                                         "(default: the experiment's eval.selection)."),
    split: str = typer.Option("test", "--split", help="Evaluation split to report: test or val."),
    against: Optional[str] = typer.Option(None, "--against", help="Baseline group label (e.g. erm): add each "
                                          "group's difference to it paired by seed, with standard error, CI, "
                                          "wins/ties/losses, paired t-test and Wilcoxon (Welch if seeds differ)."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level of --against: differences with "
                                "p >= alpha are marked ns; the CI level is 1 - alpha."),
) -> None:
    """Compare the runs under DIRECTORY: mean ± std over seeds per group, best value marked; with --against,
    paired statistics against a baseline group."""
    from .report import compare as do_compare, render

    if fmt not in ("table", "markdown", "csv", "json"):
        raise MixcliError(f"--format {fmt}: expected table, markdown, csv or json")
    if split not in ("test", "val"):
        raise MixcliError(f"--split {split}: expected test or val")
    c = do_compare(directory, by=by, metrics=metric, rule=select, split=split, against=against, alpha=alpha)
    out = render(c, fmt)
    if isinstance(out, str):
        sys.stdout.write(out if out.endswith("\n") else out + "\n")
    else:
        console.print(out)


# -------------------------------------------------------------------------------------------------- curves
@app.command()
@user_errors
def curves(
    directory: ResultsDir = Path("results"),
    metric: Optional[str] = typer.Option(None, "--metric", help="Metric to plot against the epoch (default: "
                                         "accuracy for classification, rmse for regression)."),
    by: ByOption = None,
    split: str = typer.Option("test", "--split", help="Evaluation split to plot: test or val."),
    select: Optional[str] = typer.Option(None, "--select", help="Epoch selection rule of the table's "
                                         "'selected' column: final, best or median_last10 (default: the "
                                         "experiment's eval.selection)."),
    png: Optional[Path] = typer.Option(None, "--png", help="Also write a matplotlib figure (PNG) here."),
    height: int = typer.Option(4, "--height", min=1, max=20, help="Rows of text per group's chart."),
) -> None:
    """Generalization curves: the metric per epoch for each group (mean over seeds), its best epoch, the drop
    from best to final and whether the curve is U-shaped (rule in `mixcli.curves` and under the table)."""
    from .curves import load_curves, plot_png, render_chart, render_table

    cv = load_curves(directory, metric=metric, by=by, split=split, rule=select)
    width = min(console.width, 100)
    console.print(render_chart(cv, width=width, height=height))
    console.print(render_table(cv))
    if png is not None:
        try:
            path = plot_png(cv, png)
        except OSError as exc:
            raise MixcliError(f"--png {png}: cannot write the figure ({exc.strerror or exc})") from None
        console.print(f"figure: {path}")


# ------------------------------------------------------------------------------------------------- inspect
@app.command()
@user_errors
def inspect(
    run_dir: Path = typer.Argument(..., help="A run's directory, OUT/jobs/<run_id>."),
    step: Optional[int] = typer.Option(None, "--step", help="The recorded step to show (default: the last)."),
    top: int = typer.Option(10, "--top", min=1, help="How many rows to list."),
    png: Optional[Path] = typer.Option(None, "--png", help="Also write a figure (PNG) here."),
) -> None:
    """Show what a run's method recorded while training (e.g. SelMix's gain matrix and pair distribution)."""
    import yaml

    from .registry import REGISTRY

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise MixcliError(f"{run_dir}: not a run directory (expected {cfg_path}; run directories are "
                          "OUT/jobs/<run_id>)")
    cfg = yaml.safe_load(cfg_path.read_text())
    method = REGISTRY.get("methods", cfg["method"]["name"])
    try:
        console.print(method.inspect(run_dir, png=png, step=step, top=top))
    except OSError as exc:
        raise MixcliError(f"--png {png}: cannot write the figure ({exc.strerror or exc})") from None
    if png is not None:
        console.print(f"figure: {png}")


# ---------------------------------------------------------------------------------------------------- list
@app.command("list")
@user_errors
def list_(kind: Optional[str] = typer.Argument(None, help="methods, datasets, models or losses (default: all).")
          ) -> None:
    """List the registered plugins with their package, description and default options."""
    from .registry import KINDS, REGISTRY, plugin_options

    kinds = list(KINDS) if kind is None else [kind]
    for k in kinds:
        if k not in KINDS:
            from .errors import did_you_mean
            raise MixcliError(f"unknown plugin kind '{k}'{did_you_mean(k, KINDS)}")
    for k in kinds:
        entries = REGISTRY.entries(k)
        rows = []
        for name, e in entries.items():
            error = e.error
            if error:
                rows.append(("broken", name, e.package, f"[red]{error}[/]", ""))
                continue
            cls = e.load()
            opts = plugin_options(k, cls)
            defaults = ", ".join(f"{o}={'(required)' if v is _empty() else v}" for o, v in opts.items())
            family = getattr(cls, "family", "") if k == "methods" else ""
            desc = cls.description() + (f"\n[dim]{cls.paper}[/]" if getattr(cls, "paper", "") else "")
            rows.append((family, name, f"{e.package} {e.version}", desc, defaults))
        t = Table(title=f"{k} ({len(entries)})", show_lines=True)
        if k == "methods":
            t.add_column("family", style="magenta")
        for col in ("name", "package", "description", "defaults"):
            t.add_column(col, style="cyan" if col == "name" else None, overflow="fold")
        order = {"input": 0, "feature": 1, "loss": 2, "broken": 3}
        for r in sorted(rows, key=lambda r: (order.get(r[0], 9), r[1])):
            t.add_row(*(r if k == "methods" else r[1:]))
        console.print(t)


def _empty():
    import inspect
    return inspect.Parameter.empty


# ------------------------------------------------------------------------------------------------ validate
@app.command()
@user_errors
def validate(
    experiment: Path = typer.Argument(..., help="The experiment YAML file."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a key before validation, e.g. "
                                             "--set train.epochs=5 (repeatable)."),
) -> None:
    """Check an experiment file (keys, types, ranges, plugins and their options) without running it."""
    from .jobs import expand
    from .spec import load_experiment

    exp = load_experiment(experiment, set_ or [])
    jobs = expand(exp)
    console.print(f"[green]ok[/]: {experiment} is valid: {len(jobs)} job(s) -> {exp.out}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
