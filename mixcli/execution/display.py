"""What a sweep shows while it runs: on a terminal, one overall bar (done, failed, running, queued, ETA)
and one live line per running job (epoch, loss, the primary metric) that fit 80 columns; otherwise (a log
file, CI, SLURM output) one plain line per event."""
from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Column

from .worker import FAILED, FINISHED, INTERRUPTED, LEFT, SKIPPED


def score(row: dict | None) -> str:
    """The primary test metric of a runs row or an epoch row, short."""
    row = row or {}
    for key, label, pct in (("final_test_accuracy", "acc", True), ("test_accuracy", "acc", True),
                            ("final_test_rmse", "rmse", False), ("test_rmse", "rmse", False)):
        v = row.get(key)
        if v is not None and v == v:
            return f"{label} {100 * v:.2f}%" if pct else f"{label} {v:.4g}"
    return ""


def short_label(job) -> str:
    """The job's name among the sweep's jobs (:attr:`mixcli.config.jobs.Job.title`: the method and the grid
    values that vary, ``mixup alpha=0.4 lr=0.1 s1``); without one, its grid values and seed."""
    if getattr(job, "title", ""):
        return job.title
    out = []
    for bit in job.label.split(" "):
        key, _, value = bit.partition("=")
        if key == "method":
            out.append(value)
        elif key == "seed":
            out.append(f"s{value}")
        else:
            out.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return " ".join(out)


def fit(label: str, width: int) -> str:
    """``label`` in ``width`` characters: cut inside its values, never dropping the seed at its end."""
    if len(label) <= width:
        return label
    head, sep, seed = label.rpartition(" ")
    if not sep or len(seed) + 2 > width:
        return label[:max(1, width - 1)] + "…"
    return head[:width - len(seed) - 2] + "… " + seed


INFO_W = 30  # "ep 12/200 loss 1.234 acc 71.03%"
BAR_W = 10


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class _Base:
    def __init__(self, console: Console, slots: int) -> None:
        self.console, self.slots = console, max(1, slots)
        self.n = self.k = 0
        self.counts = {"done": 0, "failed": 0, "left": 0}
        self.durations: list[float] = []
        self.live: dict[str, dict] = {}  # run_id -> {epochs, steps, done_steps, label, k, started}
        self.numbers: dict[str, int] = {}  # run_id -> its number k (kept when a run is submitted again)
        self.t0 = time.monotonic()

    def begin(self, n: int) -> None:
        self.n = n

    def submitted(self, job) -> None:
        if job.run_id not in self.numbers:
            self.k = min(self.k + 1, max(self.n, 1))
            self.numbers[job.run_id] = self.k
        self.live[job.run_id] = {"k": self.numbers[job.run_id], "label": job.label, "epochs": 0, "steps": 0,
                                 "done": 0, "info": "waiting to start", "started": False}

    def running(self) -> int:
        """Jobs that started training (a job handed to Ray or SLURM may still wait in their queue)."""
        return sum(j["started"] for j in self.live.values())

    def waiting(self, job, info: dict, waited_s: float, stalled_s: float | None, timeout: float | None) -> None:
        """This process waits for ``job``, which the live process ``info`` (its holder file) trains."""
        from ..results.store import clean_text

        pid = info.get("pid")
        who = escape(clean_text(f"{info.get('host') or '?'}:{'?' if pid is None else pid}"))
        bound = f", at most {timeout:g} s (--wait-timeout)" if timeout is not None else ""
        if stalled_s is not None:
            self._line(f"  [yellow]{job.run_id}: holder stalled for {stalled_s:.0f} s ({who}): no heartbeat, it "
                       f"is stopped or hung; waiting for it {_clock(waited_s)} so far{bound} (kill it, or send "
                       "it SIGCONT, to free the run)[/]")
        elif waited_s < 1:
            self._line(f"  [dim]{job.run_id}: held by {who}; waiting for it{bound} (taken over if it dies)[/]")
        else:
            self._line(f"  [dim]{job.run_id}: still held by {who}; waiting for it {_clock(waited_s)} so far{bound}[/]")

    def note(self, job, text: str) -> None:
        self._line(f"  [yellow]{job.run_id}: {escape(text)}[/]")

    def eta(self) -> str:
        if not self.durations:
            return "ETA ?"
        left = sum(1 - (j["done"] / j["total"] if j.get("total") else 0) for j in self.live.values())
        left += self.n - sum(self.counts.values()) - len(self.live)
        return "ETA " + _clock(sum(self.durations) / len(self.durations) * max(0.0, left) / self.slots)

    def summary(self) -> str:
        running = self.running()
        queued = max(0, self.n - sum(self.counts.values()) - running)
        left = f" · {self.counts['left']} left to other processes" if self.counts["left"] else ""
        return f"{self.counts['failed']} failed · {running} running · {queued} queued{left} · {self.eta()}"

    def progress(self, job, kind: str, payload) -> None:
        j = self.live.get(job.run_id)
        if j is None:
            return
        if kind == "start":
            epochs, steps, start = payload
            j.update(epochs=epochs, total=epochs * steps, done=(start - 1) * steps, info=f"ep {start}/{epochs}",
                     started=True)
        elif kind == "step":
            j["done"] += payload
        elif kind == "epoch":
            epoch, row = payload
            j["info"] = " ".join(b for b in (f"ep {epoch}/{j['epochs']}", f"loss {row.get('train_loss', 0):.3f}",
                                              score(row)) if b)
            self._epoch(job, j)

    def done(self, job, outcome) -> None:
        j = self.live.pop(job.run_id, None)
        k = j["k"] if j else self.numbers.get(job.run_id, self.k)
        tag = f"\\[{k}/{self.n}]"
        for note in outcome.notes:
            self._line(f"  [yellow]{tag} {job.run_id}: {escape(note)}[/]")
        if outcome.status == SKIPPED:
            self.counts["done"] += 1
            self._line(f"  [dim]{tag} {job.run_id}: already finished, skipped[/]")
        elif outcome.status == FINISHED:
            self.counts["done"] += 1
            self.durations.append(outcome.seconds)
            self._line(f"  [green]✓[/] {tag} {job.run_id}  {escape(short_label(job))}  {score(outcome.row)}  "
                       f"({outcome.seconds:.1f}s)")
        elif outcome.status == FAILED:
            self.counts["failed"] += 1
            self._line(f"  [red]✗ {tag} {job.run_id} failed: {escape(str(outcome.error))}[/]")
        elif outcome.status == INTERRUPTED:
            self._line(f"  [yellow]{tag} {job.run_id} interrupted[/]")
        elif outcome.status == LEFT:
            self.counts["left"] += 1
            self._line(f"  [yellow]{tag} {job.run_id} {escape(str(outcome.error))}[/]")
        self._refresh()

    def _line(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def _epoch(self, job, j) -> None: ...

    def _refresh(self) -> None: ...

    def end(self) -> None: ...


class LiveDisplay(_Base):
    """Rich bars on a terminal."""

    def __init__(self, console: Console, slots: int) -> None:
        super().__init__(console, slots)
        # the label column takes what the bar and the epoch line leave (35 columns at 80, at most 52)
        self.label_w = max(24, min(52, console.width - BAR_W - INFO_W - 5))
        self.p = Progress(TextColumn("{task.description}", table_column=Column(width=self.label_w, no_wrap=True,
                                                                                overflow="ellipsis")),
                          BarColumn(bar_width=BAR_W, table_column=Column(width=BAR_W, no_wrap=True)),
                          TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
                          console=console, transient=False, refresh_per_second=4)
        self.tasks: dict[str, int] = {}

    def begin(self, n: int) -> None:
        super().begin(n)
        self.p.start()
        self.overall = self.p.add_task(f"sweep 0/{n} done", total=n, info=self.summary())

    def submitted(self, job) -> None:
        super().submitted(job)
        j = self.live[job.run_id]
        num = f" {j['k']}. "
        self.tasks[job.run_id] = self.p.add_task(num + escape(fit(short_label(job), self.label_w - len(num))),
                                                 total=None, info="starting")
        self._refresh()

    def progress(self, job, kind: str, payload) -> None:
        super().progress(job, kind, payload)
        j, t = self.live.get(job.run_id), self.tasks.get(job.run_id)
        if j is not None and t is not None:
            self.p.update(t, total=j.get("total") or None, completed=j["done"], info=j["info"])
        self._refresh()

    def done(self, job, outcome) -> None:
        t = self.tasks.pop(job.run_id, None)
        if t is not None:
            self.p.remove_task(t)
        super().done(job, outcome)

    def _line(self, text: str) -> None:
        self.p.console.print(text, highlight=False, soft_wrap=True)

    def _refresh(self) -> None:
        n_done = sum(self.counts.values())
        self.p.update(self.overall, completed=n_done, info=self.summary(),
                      description=f"sweep {self.counts['done']}/{self.n} done")

    def end(self) -> None:
        self._refresh()
        self.p.stop()


class LogDisplay(_Base):
    """One plain line per event, for logs."""

    def submitted(self, job) -> None:
        super().submitted(job)
        self._line(f"  \\[{self.numbers[job.run_id]}/{self.n}] start {job.run_id}  {escape(short_label(job))}")

    def _epoch(self, job, j) -> None:
        self._line(f"  \\[{j['k']}/{self.n}] {job.run_id}  {j['info']}")

    def end(self) -> None:
        self._line(f"  sweep: {self.summary()} ({_clock(time.monotonic() - self.t0)} elapsed)")


def make_display(console: Console, slots: int):
    return LiveDisplay(console, slots) if console.is_terminal else LogDisplay(console, slots)
