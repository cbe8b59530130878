"""The ``mixcli`` command line: run, status, show, compare, curves, reliability, export, inspect, list,
validate."""
from __future__ import annotations

import functools
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, List, Optional

try:  # Ctrl-C while the (slow) imports load: one line, no traceback
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .errors import MixcliError, PluginError  # (not from .api: the CLI starts without importing torch)
except KeyboardInterrupt:
    sys.stderr.write("mixcli: interrupted\n")
    raise SystemExit(130) from None

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Run mixup experiments described in YAML, record them as parquet, compare them.")
console = Console()
err = Console(stderr=True)

# options shared by the report commands (compare, curves)
ResultsDir = Annotated[Path, typer.Argument(help="An output directory holding runs/ and epochs/.")]
SetOption = Annotated[Optional[List[str]], typer.Option(
    "--set", help="Override a key before validation, e.g. --set train.epochs=5 (repeatable; values are YAML; "
                  "a grid entry whole: --set grid.KEY=LIST).")]
ByOption = Annotated[Optional[List[str]], typer.Option(
    "--by", help="Group by this column or dotted config key (repeatable; default: method plus the keys that vary).")]


_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def plain(text: str) -> str:
    """``text`` without terminal control characters (escape sequences, bidirectional overrides; newlines
    stay): what a message quotes from a file must not drive the terminal."""
    return _CONTROL.sub("", text)


def user_errors(fn):
    """Bad input -> one clear message on stderr and exit code 2, no traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (MixcliError, PluginError) as exc:
            err.print(f"[bold red]error:[/] {escape(plain(str(exc)))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


def results_reader(fn):
    """A command that reads result files: a file skipped by several of its steps is warned about once."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .results.runs import reading

        with reading():
            return fn(*args, **kwargs)
    return wrapper


# ----------------------------------------------------------------------------------------------------- run
@app.command()
@user_errors
def run(
    experiment: Path = typer.Argument(..., help="The experiment YAML file."),
    set_: SetOption = None,
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: the file's 'out:' key, "
                                       "else results/<name>)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the jobs and exit without training."),
    jobs_n: Optional[int] = typer.Option(None, "--jobs", "-j", help="Jobs trained at once, each in a worker "
                                         "process (default: one per GPU on CUDA, one per core on CPU)."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPUs to spread the jobs over, e.g. 0,1 "
                                       "(default: all visible)."),
    jobs_per_gpu: int = typer.Option(1, "--jobs-per-gpu", help="Jobs packed onto one GPU (small jobs)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads per job (default: 1 on "
                                          "every machine, so that a run gives the same numbers anywhere; "
                                          "recorded in the runs table)."),
    in_process: bool = typer.Option(False, "--in-process", help="Run the jobs one at a time in this process "
                                    "instead of worker processes (for debuggers and profilers; a native "
                                    "crash then ends the sweep)."),
    executor: str = typer.Option("local", "--executor", help="local (this machine), ray (a Ray instance or "
                                 "cluster; pip install \"mixcli[ray]\") or slurm (a job array, one run per "
                                 "task; pip install \"mixcli[slurm]\")."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="HOST:PORT (or auto) of a running "
                                              "Ray cluster to join (default: a private local Ray instance)."),
    max_retries: int = typer.Option(3, "--max-retries", help="Ray: times a task lost with its worker or "
                                    "node is retried (it resumes from its checkpoint)."),
    slurm_partition: Optional[str] = typer.Option(None, "--slurm-partition", help="SLURM partition of the "
                                                  "array (default: the cluster's)."),
    slurm_time: str = typer.Option("1:00:00", "--slurm-time", help="Time limit of one array task (one run), "
                                   "e.g. 4:00:00; the run is requeued at the limit."),
    slurm_gpus: int = typer.Option(0, "--slurm-gpus-per-task", help="GPUs per array task (0: a CPU sweep)."),
    slurm_cpus: Optional[int] = typer.Option(None, "--slurm-cpus-per-task", help="CPUs per array task "
                                             "(default: --threads, else 1)."),
    slurm_mem: Optional[str] = typer.Option(None, "--slurm-mem", help="Memory per array task, e.g. 16G."),
    slurm_account: Optional[str] = typer.Option(None, "--slurm-account", help="SLURM account to charge."),
    slurm_qos: Optional[str] = typer.Option(None, "--slurm-qos", help="SLURM quality of service."),
    slurm_constraint: Optional[str] = typer.Option(None, "--slurm-constraint", help="SLURM node features "
                                                   "required, e.g. a100."),
    slurm_setup: Optional[List[str]] = typer.Option(None, "--slurm-setup", help="A shell line run before "
                                                    "each task, e.g. 'module load cuda' (repeatable)."),
    slurm_parallelism: Optional[int] = typer.Option(None, "--slurm-parallelism", help="Array tasks running at "
                                                    "once (default: as many as SLURM allows)."),
    slurm_requeues: int = typer.Option(3, "--slurm-requeues", help="Times one task is requeued at its time "
                                       "limit or on preemption before its run is recorded failed."),
    slurm_signal_s: int = typer.Option(120, "--slurm-signal-s", help="Seconds before the time limit at which "
                                       "a task records its run interrupted and requeues itself."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Rerun only the runs recorded failed "
                                      "(a plain rerun leaves them alone)."),
    rerun_stale: bool = typer.Option(False, "--rerun-stale", help="Retrain finished runs produced by "
                                     "another version of a plugin package the experiment uses."),
    wait_timeout: Optional[float] = typer.Option(None, "--wait-timeout", help="Seconds to wait for a run "
                                                 "that another live mixcli process holds (e.g. a stalled "
                                                 "one) before leaving it to that process and exiting with "
                                                 "code 4 (default: wait as long as its holder lives)."),
    log: Optional[List[str]] = typer.Option(None, "--log", help="Send results to a logger while runs train: "
                                            "mlflow, tensorboard or wandb, NAME=URI for a destination "
                                            "(repeatable; replaces the file's 'log:')."),
) -> None:
    """Run every job of an experiment (skipping finished runs, resuming interrupted ones), then compare.

    Any number of `mixcli run` processes may share one output directory: each run is claimed before it
    trains and trains exactly once. A failing job is recorded failed and the sweep goes on (exit code 1)."""
    from .execution.display import make_display
    from .execution.experiment import plan, run_experiment
    from .results.compare import compare
    from .results.render import render

    p = plan(experiment, set_ or [], out, log)
    exp, jobs = p.exp, p.jobs
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
    def on_start(todo, ex) -> None:
        where = f"{ex.slots} at once" if ex.slots > 1 else "one at a time"
        if executor == "ray":
            where += f" on {ex.nodes} Ray node(s), {ex.cpus:g} CPU(s)" + \
                (f" + {ex.gpus_per_job:g} GPU" if ex.gpus_per_job else "") + " per task"
        elif executor == "slurm":
            where = (f"a SLURM array, {ex.opts.parallelism or 'all'} task(s) at once, {ex.cpus} CPU(s)"
                     + (f" + {ex.opts.gpus_per_task} GPU(s)" if ex.opts.gpus_per_task else "") + " per task")
        console.print(f"[bold]{exp.name}[/]: {len(todo.jobs)} job(s) on {device_label(ex)}, {where} -> {exp.out}")

    slurm = None
    if executor == "slurm":
        slurm = dict(partition=slurm_partition, time=slurm_time, gpus_per_task=slurm_gpus, cpus_per_task=slurm_cpus,
                     mem=slurm_mem, account=slurm_account, qos=slurm_qos, constraint=slurm_constraint,
                     setup=slurm_setup or [], parallelism=slurm_parallelism, requeues=slurm_requeues,
                     signal_s=slurm_signal_s)
    elif any(v is not None for v in (slurm_partition, slurm_cpus, slurm_mem, slurm_account, slurm_qos,
                                     slurm_constraint, slurm_parallelism)) or slurm_setup or slurm_gpus:
        raise MixcliError("--slurm-* options are only used with --executor slurm")
    try:
        result = run_experiment(p, device=device, jobs=jobs_n, threads=threads, gpus=gpus,
                                jobs_per_gpu=jobs_per_gpu, executor=executor, ray_address=ray_address,
                                max_retries=max_retries, slurm=slurm,
                                retry_failed=retry_failed, rerun_stale=rerun_stale, in_process=in_process,
                                wait_timeout=wait_timeout, display=lambda ex: make_display(console, ex.slots),
                                on_start=on_start, warn=_warn_line)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted; the runs in progress are recorded interrupted. Run the same command "
                  "again to resume them from their last finished epoch.[/]")
        raise typer.Exit(130) from None
    if result.sweep is None:
        console.print(f"[bold]{exp.name}[/]: no failed runs to retry under {exp.out}")
        return
    sweep = result.sweep
    try:  # the final table is read from the store, after every job has ended
        cmp = compare(exp.out, run_ids=[j.run_id for j in p.targets])
        console.print(render(cmp, "table"))
    except MixcliError as exc:
        console.print(f"[yellow]no table: {escape(str(exc))}[/]")
    console.print(f"results: {exp.out}/runs, {exp.out}/epochs (parquet); `mixcli compare {exp.out}` for more views")
    if sweep.by_others:
        console.print(f"{len(sweep.by_others)} run(s) were trained by another mixcli process sharing {exp.out}")
    failed = sweep.of("failed")
    left = sweep.of("left")
    if left:  # --wait-timeout ran out: one line; exit code 4 unless a run failed (1) or had bad input (2)
        err.print(f"[yellow]{len(left)} run(s) left to the processes holding them: " +
                  escape("; ".join(f"{o.run_id} {o.error}" for o in left)) +
                  f". `mixcli status {escape(str(exp.out))}` shows them; the same command resumes them once "
                  "their holders are gone[/]", highlight=False, soft_wrap=True)
    bad_input = [o for o in failed if o.input_error]
    if bad_input:  # the same bad input (a data file, a plugin option) fails its jobs alike: one line
        first = bad_input[0]
        more = f" ({len(bad_input)} jobs failed on it)" if len(bad_input) > 1 else ""
        err.print(f"[bold red]error:[/] {escape(first.error or '')}{more}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    if failed:
        err.print(f"[red]{len(failed)} run(s) failed:[/]")
        for o in failed:
            err.print(f"  {o.run_id}: {o.error}", highlight=False, markup=False, soft_wrap=True)
        retry = ["mixcli", "run", str(experiment)] + [a for x in set_ or [] for a in ("--set", x)] + \
            (["--out", str(out)] if out is not None else []) + ["--retry-failed"]
        err.print("retry only these: " + shlex.join(retry), highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1)
    if left:
        raise typer.Exit(EXIT_LEFT)


def _warn_line(line: str) -> None:
    """A warning of the sweep (stale runs), in the style of the CLI's own."""
    if line.startswith("warning: "):
        err.print(f"[yellow]warning:[/] {escape(line.removeprefix('warning: '))}", soft_wrap=True)
    else:
        err.print(line, highlight=False, markup=False, soft_wrap=True)


def device_label(ex) -> str:
    gpus = getattr(ex, "gpus", None)
    dev = getattr(ex, "dev", None) or getattr(ex, "device", None)
    if gpus:
        return f"cuda (GPUs {','.join(map(str, gpus))})"
    return str(dev)


# -------------------------------------------------------------------------------------------------- status
@app.command()
@user_errors
def status(
    target: Path = typer.Argument(..., help="An experiment file (shows its pending jobs too) or an output "
                                  "directory."),
    set_: SetOption = None,
    out: Optional[Path] = typer.Option(None, "--out", help="The output directory, as given to `mixcli run`."),
) -> None:
    """Where a sweep stands: runs by status, who trains each running run and how far, and an ETA."""
    from .execution.status import ORDER, status_of
    from .results.store import clean_text

    title, st = status_of(target, set_ or [], out)
    t = Table(title=title, title_justify="left")
    for s in ORDER:
        t.add_column(s, justify="right")
    t.add_column("ETA", justify="right")
    eta = "?" if st.eta_s is None else time.strftime("%H:%M:%S", time.gmtime(st.eta_s))
    t.add_row(*[str(st.counts.get(s, 0)) for s in ORDER], eta)
    console.print(t)
    if st.running:
        from rich import box

        r = Table(title="running", title_justify="left", box=box.SIMPLE_HEAD)  # the job's name fits 80 columns
        for col in ("run_id", "job", "holder", "heartbeat", "epoch"):
            r.add_column(col, overflow="fold", no_wrap=col in ("run_id", "job"))
        for j in st.running:
            hb = "?" if j["heartbeat_s"] is None else f"{j['heartbeat_s']:.0f}s ago"
            who = j["holder"] + (f" ({j['where']})" if j.get("where") else "")
            if j.get("stalled_s") is not None:
                who = f"holder stalled for {j['stalled_s']:.0f} s ({who})"
            r.add_row(*(escape(clean_text(str(v))) for v in (j["run_id"], j["label"], who, hb,
                                                               f"{j['epoch']}/{j['epochs'] or '?'}")))
        console.print(r)
        for j in st.running:
            if j.get("stalled_s") is not None:
                console.print(clean_text(f"{j['run_id']}: holder stalled for {j['stalled_s']:.0f} s ({j['holder']}): "
                                         "no heartbeat, it is stopped or hung; no ETA for this run (kill the "
                                         "holder, or send it SIGCONT, and `mixcli run` takes it over)"),
                              highlight=False, soft_wrap=True, markup=False)
    for array, counts in st.arrays:
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        console.print(f"slurm array {array}: {states}", highlight=False, soft_wrap=True)
    if st.interrupted:
        console.print(clean_text(f"interrupted (resumed by the next `mixcli run`): {', '.join(st.interrupted)}"),
                      highlight=False, soft_wrap=True, markup=False)
    for rid, error, where in st.failed:
        console.print(f"[red]failed[/] {escape(clean_text(f'{rid}: {error}'))}" +
                      (f" \\[{escape(clean_text(where))}]" if where else ""), highlight=False, soft_wrap=True)
    for msg in st.damaged:
        err.print(f"[yellow]warning:[/] {msg}", highlight=False, soft_wrap=True)


# -------------------------------------------------------------------------------------------------- doctor
@app.command()
@user_errors
def doctor(
    directory: Path = typer.Argument(..., help="An output directory that several machines are to share."),
) -> None:
    """Check that DIRECTORY's file locks work and reach across machines (what the claims need); exit
    code 1 on a problem."""
    from .execution.doctor import doctor as checks

    found = checks(directory)
    for ok, line in found:
        console.print(("[green]ok[/]      " if ok else "[red]problem[/] ") + escape(line), highlight=False,
                      soft_wrap=True)
    if not all(ok for ok, _ in found):
        raise typer.Exit(1)


# -------------------------------------------------------------------------------------------------- export
@app.command()
@user_errors
@results_reader
def export(
    directory: Path = typer.Argument(..., help="An output directory holding runs/ and epochs/."),
    to: str = typer.Option(..., "--to", help="The logger to send the runs to: mlflow, tensorboard or wandb."),
    uri: Optional[str] = typer.Option(None, "--uri", help="Its destination: an MLflow tracking URI or a "
                                      "TensorBoard directory or a W&B [ENTITY/]PROJECT (default: OUT/mlflow.db, "
                                      "OUT/tensorboard, the experiment's name)."),
) -> None:
    """Send the runs already under DIRECTORY (with their epochs, config and PNGs) to MLflow, TensorBoard or W&B.
    Runs the destination already holds are skipped."""
    from .results.export import export as do_export

    done, skipped = do_export(directory, to, uri)
    console.print(f"exported {done} run(s) to {to}" + (f" ({uri})" if uri else "") +
                  (f"; {skipped} already there, skipped" if skipped else ""), highlight=False)


# ---------------------------------------------------------------------------------------------------- show
@app.command()
@user_errors
def show(
    experiment: Path = typer.Argument(..., help="The experiment YAML file."),
    set_: SetOption = None,
    job: Optional[str] = typer.Option(None, "--job", help="Only this job: its number (1-based, in the "
                                      "order of `run --dry-run`) or its run id (a unique prefix will do)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="The torch threads per job that `mixcli "
                                          "run --threads` would use (default: 1)."),
) -> None:
    """Print the resolved configuration of each job as YAML (what jobs/<run_id>/config.yaml will hold).

    Each document is headed by its run id, its grid values and the torch threads it trains with (recorded
    in the runs table, not part of the run id)."""
    from .config.jobs import expand
    from .config.spec import load_experiment
    from .execution.executors import THREADS
    from .results.store import config_yaml

    if threads is not None and threads < 1:
        raise MixcliError(f"--threads {threads}: expected a positive integer")
    jobs = expand(load_experiment(experiment, set_ or []))
    if job is not None:
        jobs = [pick_job(jobs, job)]
    docs = [f"# {plain(j.run_id)}: {plain(j.label)} (threads: {threads or THREADS})\n{plain(config_yaml(j.config))}"
            for j in jobs]
    sys.stdout.write("---\n".join(docs))


def pick_job(jobs: list, key: str):
    """The job ``key`` names: a 1-based number or a run id (or a prefix of exactly one)."""
    if not key.strip():
        raise MixcliError(f"--job '': expected a job number (1-{len(jobs)}) or a run id (`mixcli run EXP "
                          "--dry-run` lists them)")
    if key.isdigit():
        if not 1 <= int(key) <= len(jobs):
            raise MixcliError(f"--job {key}: expected a job number from 1 to {len(jobs)}")
        return jobs[int(key) - 1]
    found = [j for j in jobs if j.run_id.startswith(key)]
    exact = [j for j in found if j.run_id == key]
    if len(exact) == 1 or len(found) == 1:
        return (exact or found)[0]
    what = f"matches {len(found)} run ids" if found else "is no run id of this experiment"
    raise MixcliError(f"--job {key}: {what}; give a job number (1-{len(jobs)}) or a run id (`mixcli run "
                      "EXP --dry-run` lists them)")


# ------------------------------------------------------------------------------------------------- compare
@app.command()
@user_errors
@results_reader
def compare(
    directories: Optional[List[Path]] = typer.Argument(None, help="Output directories holding runs/ and "
                                                       "epochs/ (default: results); their runs are "
                                                       "compared in one table."),
    by: ByOption = None,
    within: Optional[str] = typer.Option(None, "--within", help="Split the table into blocks by this "
                                         "grouping key (e.g. dataset.fraction) and mark the best of each "
                                         "column within each block."),
    metric: Optional[List[str]] = typer.Option(None, "--metric", help="Metric column to show (repeatable; "
                                               "default: the task's standard set)."),
    fmt: str = typer.Option("table", "--format", help="table, markdown, csv, json or latex (booktabs)."),
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
    """Compare the runs under DIRECTORIES: mean ± std over seeds per group, best value marked; with
    --against, paired statistics against a baseline group."""
    from .results.compare import compare as do_compare
    from .results.render import render

    if fmt not in ("table", "markdown", "csv", "json", "latex"):
        raise MixcliError(f"--format {fmt}: expected table, markdown, csv, json or latex")
    if split not in ("test", "val"):
        raise MixcliError(f"--split {split}: expected test or val")
    c = do_compare(directories or [Path("results")], by=by, metrics=metric, rule=select, split=split,
                   within=within, against=against, alpha=alpha)
    out = render(c, fmt, width=console.width)
    if isinstance(out, str):
        sys.stdout.write(out if out.endswith("\n") else out + "\n")
    else:
        console.print(out)


# -------------------------------------------------------------------------------------------------- curves
@app.command()
@user_errors
@results_reader
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
    from best to final and whether the curve is U-shaped (rule in `mixcli.results.curves` and under the table)."""
    from .results.curves import load_curves, plot_png, render_chart, render_table

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


# --------------------------------------------------------------------------------------------- reliability
@app.command()
@user_errors
@results_reader
def reliability(
    directory: ResultsDir = Path("results"),
    by: ByOption = None,
    png: Optional[Path] = typer.Option(None, "--png", help="Also write the reliability diagrams (PNG) here."),
) -> None:
    """Calibration per group from the runs that had the 'calibration' evaluator (eval.extra): the fitted
    temperature and the ECE before and after scaling, and with --png a reliability diagram per group."""
    from .results.reliability import load_reliability, plot_png, render_table

    experiment, groups = load_reliability(directory, by=by)
    console.print(render_table(experiment, groups))
    if png is not None:
        try:
            path = plot_png(experiment, groups, png)
        except OSError as exc:
            raise MixcliError(f"--png {png}: cannot write the figure ({exc.strerror or exc})") from None
        console.print(f"figure: {path}")


# ------------------------------------------------------------------------------------------------- inspect
@app.command()
@user_errors
@results_reader
def inspect(
    run_dir: Path = typer.Argument(..., help="A run's directory, OUT/jobs/<run_id>."),
    step: Optional[int] = typer.Option(None, "--step", help="The recorded step to show (default: the last)."),
    top: int = typer.Option(10, "--top", min=1, help="How many rows to list."),
    png: Optional[Path] = typer.Option(None, "--png", help="Also write a figure (PNG) here."),
) -> None:
    """Show what a run's method recorded while training (e.g. SelMix's gain matrix and pair distribution)."""
    from .config.init_from import read_run_config
    from .registry import REGISTRY

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise MixcliError(f"{run_dir}: not a run directory (expected {cfg_path}; run directories are "
                          "OUT/jobs/<run_id>)")
    cfg = read_run_config(cfg_path, "inspect")
    method = REGISTRY.get("methods", str(cfg["method"].get("name")))
    try:
        shown = method.inspect(run_dir, png=png, step=step, top=top)
    except (MixcliError, PluginError):
        raise
    except OSError as exc:
        if png is None:
            raise MixcliError(f"{run_dir}: cannot read what the run recorded ({exc.strerror or exc})") from None
        raise MixcliError(f"--png {png}: cannot write the figure ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - a damaged or crafted record is one line
        from .results.runs import clean_line

        raise MixcliError(f"{clean_line(run_dir)}: what the run recorded cannot be read "
                          f"({clean_line(f'{type(exc).__name__}: {exc}', 160)})") from None
    console.print(shown)
    if png is not None:
        console.print(f"figure: {png}")


# ---------------------------------------------------------------------------------------------------- list
@app.command("list")
@user_errors
def list_(kind: Optional[str] = typer.Argument(
        None, help="methods, datasets, models, losses, evaluators or loggers (default: all).")) -> None:
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
            if k == "evaluators":  # the metrics it records, with their directions
                desc += "\n[green]" + ", ".join(f"{m.name} {'↑' if m.higher_is_better else '↓'}"
                                                for m in getattr(cls, "metrics", ())) + "[/]"
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
    set_: SetOption = None,
) -> None:
    """Check an experiment file (keys, types, ranges, plugins and their options) without running it."""
    from .config.jobs import expand
    from .config.spec import load_experiment

    exp = load_experiment(experiment, set_ or [])
    jobs = expand(exp)
    console.print(f"[green]ok[/]: {experiment} is valid: {len(jobs)} job(s) -> {exp.out}")


EXIT_OUT_OF_MEMORY = 3  # documented in the README (Exit codes)
EXIT_LEFT = 4  # runs left to their holders after --wait-timeout (README: Exit codes)


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, (OSError, ImportError)) and (
        getattr(exc, "errno", None) == 12 or "Cannot allocate memory" in text or "failed to map segment" in text)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # outside a command's own handling (e.g. while a command's imports load)
        sys.stderr.write("mixcli: interrupted\n")
        raise SystemExit(130) from None
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is turned into a line; the rest is raised
        if not _out_of_memory(exc):
            raise
        first = " ".join(str(exc).split())[:160]
        sys.stderr.write(f"mixcli: out of memory ({type(exc).__name__}: {first}); free memory or raise the "
                         "process's limit (ulimit -v), or train fewer jobs at once (--jobs)\n")
        raise SystemExit(EXIT_OUT_OF_MEMORY) from None


if __name__ == "__main__":
    main()
