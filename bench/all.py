"""Every performance target in one run: each benchmark script in turn, one report.

    .venv/bin/python bench/all.py [--quick] [--only NAME,...] [--output PATH] [--dry-run] [--dsn URL]
                                  [--max-load L] [--keep-logs]

The issue is done when every target is measured in one run on an otherwise idle machine; the scripts in bench/ each
measure some of them and write their figures in their own ways. This runs them one after another, each as a
subprocess of its own (so that one's memory, imports and servers never weigh on the next), with the arguments that
measure the issue's targets:

- ``run.py``: benchmarks 1-3 (capture vs raw fetch, capture -> load -> commit vs the watermark load, peak RSS);
- ``big_transaction.py``: one 2,000,000-row transaction drained at batch size 50,000 (item 6);
- ``burst_backlog.py --sizes 1000000,5000000``: a burst drains in linear time (item 2), and
  ``--sizes 1000000,10000000 --rss``: peak RSS, 1M vs 10M backlog (item 6);
- ``end_to_end.py --batch-size 50000``: capture -> 3 rules -> 5 expectations -> merge -> commit (item 3; its
  no-stages variant is the fused pipeline, set against run.py's watermark load for item 1), at the product's
  default batch size; and ``--batch-size 200000``, the batch size of run.py's staged comparison;
- ``continuous_lag.py``: 5 minutes at 1,000 changes/s, staged, fused and fused with a loop (item 4);
- ``parallel_snapshot.py``: 1 vs 2 key ranges (item 5);
- ``mysql_capture.py``, ``mongodb_capture.py``: capture against the bare loops (item 7);
- ``stream_protocol.py``: the streaming replication protocol against the peek on benchmark 1's workload (no target:
  it explains why capture peeks; its section is in the report, it adds no row to the targets table).

For each it records the start and end, the exit code, the load average before it and its Markdown section (the file
it writes to a temporary path through its ``--output``/``--write`` option, else its stdout; end_to_end.py prints no
Markdown, so its section is built from its ``--json`` and its stdout). The scripts' own files are never touched:
run.py and big_transaction.py write only to the temporary paths given to them. A script that fails is reported as
failed with the last lines of its stderr, and the run goes on with the next one.

The report (default ``BENCHMARKS-all.md``; ``--output PATH``) starts with one "Against the targets" table covering
every target of the issue, this run's figure and whether it is met, then the machine, the whole run's time and a
table of the steps, then each script's section (its headings one level down). ``--quick`` runs every script at its
smoke size (a check of the wiring, not a measurement) and writes to a temporary file unless ``--output`` is given;
``--only run,mysql_capture`` runs a subset (a step's name, or a script's name for all its steps: burst_backlog is
two steps, burst_backlog_linear and burst_backlog_rss);
``--dry-run`` prints the commands and the estimated durations and runs nothing.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_OUTPUT = REPO_ROOT / "BENCHMARKS-all.md"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"  # benchlib.DEFAULT_DSN (not imported: see main)
STDERR_TAIL = 30  # lines of a failed script's stderr kept in the report


@dataclass(frozen=True)
class Step:
    """One subprocess of the run. ``{md}`` and ``{json}`` in the arguments become files in the step's work folder."""

    name: str
    script: str
    title: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    estimate: str  # full size, from the run times BENCHMARKS.md records
    minutes: float  # the same, one figure (for the total)
    section_from: str  # "md" (the file it writes), "stdout", or "end_to_end" (built from its JSON and stdout)


STEPS = (
    Step("run", "run.py", "Benchmarks 1-3: capture vs raw fetch, capture -> load -> commit vs watermark, peak RSS",
         ("--output", "{md}", "--json", "{json}"), ("--quick", "--output", "{md}", "--json", "{json}"),
         "about 2 min (BENCHMARKS.md: whole run 1.8 min)", 2, "md"),
    Step("big_transaction", "big_transaction.py", "One huge transaction at batch size 50,000 (item 6)",
         ("--output", "{md}", "--json", "{json}"), ("--quick", "--output", "{md}", "--json", "{json}"),
         "about 9 min (BENCHMARKS.md section 4: whole run 8.7 min)", 9, "md"),
    Step("burst_backlog_linear", "burst_backlog.py", "A burst backlog drains in linear time, 1M vs 5M (item 2)",
         ("--sizes", "1000000,5000000"), ("--sizes", "100000,300000", "--batch-size", "50000"),
         "about 4 min (section 13: drains 12.0 s + 66.5 s; the seeding and the bursts are not recorded)", 4, "stdout"),
    Step("burst_backlog_rss", "burst_backlog.py", "Peak RSS of a burst drain, 1M vs 10M (item 6)",
         ("--sizes", "1000000,10000000", "--rss"), ("--sizes", "100000,300000", "--batch-size", "50000", "--rss"),
         "about 9 min (section 13: drains 9.5 s + 227.8 s; rendered 9 min after the linear run)", 9, "stdout"),
    Step("end_to_end", "end_to_end.py", "End to end with 3 rules and 5 expectations, batch size 50,000 (item 3)",
         ("--batch-size", "50000", "--json", "{json}"), ("--rows", "50000", "--json", "{json}"),
         "about 4-5 min (section 11: a run of both variants took 4 min; at 50,000 the drains were 28.6 s + 21.4 s), "
         "plus its own wait for a 1-minute load average under 0.8 before each variant (at most 20 min each)",
         5, "end_to_end"),
    Step("end_to_end_200k", "end_to_end.py", "The same at batch size 200,000, run.py's (items 1 and 3)",
         ("--batch-size", "200000", "--json", "{json}"), ("--rows", "50000", "--json", "{json}"),
         "about 3-4 min (section 11: at 200,000 the drains were 15.6 s + 17.9 s without reading ahead), plus its "
         "wait for a quiet machine", 4, "end_to_end"),
    Step("continuous_lag", "continuous_lag.py", "Continuous mode lag at 1,000 changes/s, 5 minutes (item 4)",
         ("--json", "{json}"), ("--minutes", "1", "--json", "{json}"),
         "about 21-25 min (section 12: main run 10:47-11:08 UTC; its docstring: about 25 minutes)", 23, "stdout"),
    Step("parallel_snapshot", "parallel_snapshot.py", "Parallel initial snapshot, 1 vs 2 key ranges (item 5)",
         ("--write", "{md}"), ("--quick", "--write", "{md}"),
         "about 2-3 min (section 14: snapshots 25.7 s + 23.7 s; seeding, warm-up and checks not recorded)", 3, "md"),
    Step("mysql_capture", "mysql_capture.py", "MariaDB capture vs a bare pymysqlreplication loop (item 7)",
         (), ("--quick",),
         "about 1-2 min (section 7: timed parts about 37 s; server start and workload not recorded)", 1.5, "stdout"),
    Step("mongodb_capture", "mongodb_capture.py", "MongoDB capture vs a bare change-stream loop (item 7)",
         (), ("--quick",),
         "about 2 min (section 8: timed parts about 52 s; server start and workload not recorded)", 2, "stdout"),
    Step("stream_protocol", "stream_protocol.py", "Streaming replication protocol vs peek (no target: why capture "
         "peeks)", ("--write", "{md}", "--json", "{json}"), ("--quick", "--write", "{md}", "--json", "{json}"),
         "under 1 min (its run with --pg18 took 1.3 min, of which the PostgreSQL 15 half 39 s)", 1, "md"),
)


@dataclass
class Outcome:
    step: Step
    argv: list[str]
    started: dt.datetime | None = None
    ended: dt.datetime | None = None
    seconds: float = 0.0
    loadavg: tuple[float, float, float] | None = None
    waited: float = 0.0  # seconds spent waiting for --max-load
    returncode: int | None = None  # None: not run (stopped before it)
    stdout: str = ""
    stderr_tail: list[str] = field(default_factory=list)
    md: str | None = None  # the file it wrote, when it writes one
    data: dict[str, Any] | None = None  # its --json, when it writes one

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def path(self, kind: str) -> Path | None:
        """The ``{md}``/``{json}`` file given to the script, None when it was given none."""
        suffix = f"{os.sep}{self.step.name}.{kind}"
        return next((Path(a) for a in self.argv if a.endswith(suffix)), None)


class Stopped(Exception):
    """SIGTERM or SIGINT reached this process: the running script is stopped, the report covers what ran."""


def _on_signal(signum: int, _frame: Any) -> None:
    raise Stopped(f"signal {signum}")


# --- running -----------------------------------------------------------------------------------------------------


def select_steps(only: str | None) -> list[Step]:
    if not only:
        return list(STEPS)
    wanted = {x.strip().removesuffix(".py") for x in only.split(",") if x.strip()}
    known = {s.name for s in STEPS} | {s.script.removesuffix(".py") for s in STEPS}
    if wanted - known:
        raise SystemExit(f"--only: unknown {', '.join(sorted(wanted - known))}; choose from "
                         f"{', '.join(sorted(known))}")
    return [s for s in STEPS if s.name in wanted or s.script.removesuffix(".py") in wanted]


def step_argv(step: Step, quick: bool, work: Path, dsn: str | None) -> list[str]:
    paths = {"md": str(work / f"{step.name}.md"), "json": str(work / f"{step.name}.json")}
    args = [a.format(**paths) for a in (step.quick if quick else step.full)]
    return [sys.executable, str(BENCH_DIR / step.script), *args, *(["--dsn", dsn] if dsn else [])]


def display(argv: list[str], work: Path | None = None) -> str:
    """The command as one would type it from the repository's root."""
    shown = []
    for a in argv:
        if a == sys.executable:
            a = ".venv/bin/python" if Path(a).parent.parent.resolve() == (REPO_ROOT / ".venv").resolve() else a
        elif a.startswith(str(REPO_ROOT) + os.sep):
            a = os.path.relpath(a, REPO_ROOT)
        elif work is not None and a.startswith(str(work) + os.sep):
            a = "$WORK/" + os.path.relpath(a, work)
        shown.append(shlex.quote(a) if not a.startswith("$WORK/") else a)
    return " ".join(shown)


def wait_for_quiet(max_load: float, name: str, poll_s: float = 30.0, limit_s: float = 1200.0) -> float:
    started = time.monotonic()
    while max_load > 0 and os.getloadavg()[0] >= max_load and time.monotonic() - started < limit_s:
        log(f"{name}: load average {os.getloadavg()[0]:.2f} >= {max_load}: waiting")
        time.sleep(poll_s)
    return time.monotonic() - started


def run_step(outcome: Outcome, logs: Path, max_load: float) -> None:
    """Run one script; its stderr goes to the terminal as it comes (and to a log), its stdout to a log."""
    step = outcome.step
    outcome.waited = wait_for_quiet(max_load, step.name)
    outcome.loadavg = os.getloadavg()
    outcome.started = dt.datetime.now(dt.timezone.utc)
    log(f"{step.name}: {display(outcome.argv, logs)} (load average {fmt_load(outcome.loadavg)})")
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
    started = time.monotonic()
    with open(logs / f"{step.name}.stdout", "w+") as out, open(logs / f"{step.name}.stderr", "w") as err:
        # A session of its own: a Ctrl-C at the terminal reaches only this process, which passes one SIGTERM on
        # (a second signal could cut the script's own clean-up short).
        proc = subprocess.Popen(outcome.argv, cwd=REPO_ROOT, stdout=out, stderr=subprocess.PIPE, text=True,
                                errors="replace", start_new_session=True)
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                sys.stderr.write(line)
                err.write(line)
                tail.append(line.rstrip("\n"))
            proc.wait()
        except BaseException:
            # Stop the script the way its own handlers expect (each drops its databases and stops its servers on
            # SIGTERM), wait for that, then pass the stop on.
            if proc.poll() is None:
                log(f"{step.name}: stopping it (SIGTERM) and waiting for its clean-up")
                proc.send_signal(signal.SIGTERM)
            try:
                rest = proc.communicate(timeout=300)[1] or ""  # its clean-up's stderr, read so that it never blocks
            except subprocess.TimeoutExpired:
                proc.kill()
                rest = proc.communicate()[1] or ""
            sys.stderr.write(rest)
            err.write(rest)
            tail.extend(rest.splitlines())
            raise
        finally:
            outcome.seconds = time.monotonic() - started
            outcome.ended = dt.datetime.now(dt.timezone.utc)
            outcome.returncode = proc.returncode
            outcome.stderr_tail = list(tail)
            out.seek(0)
            outcome.stdout = out.read()
    md, js = outcome.path("md"), outcome.path("json")
    if md is not None and md.exists():
        outcome.md = md.read_text()
    if js is not None and js.exists():
        try:
            outcome.data = json.loads(js.read_text())
        except ValueError as exc:
            log(f"{step.name}: its JSON did not parse: {exc}")
    log(f"{step.name}: exit {outcome.returncode} after {outcome.seconds / 60:.1f} min")


# --- figures for the targets table ---------------------------------------------------------------------------------


@dataclass
class Target:
    item: str
    what: str
    goal: str
    step: str  # the step that measures it
    figure: Callable[[dict[str, Outcome]], tuple[str, bool | None]]  # (this run's figure, met / not met / None)
    also: tuple[str, ...] = ()  # other steps whose figures it uses


def bold_ratio(text: str, pattern: str) -> float | None:
    """The ``**1.23×**`` (or ``x``) that follows ``pattern`` in a script's Markdown."""
    match = re.search(pattern + r"[^*\n]*\*\*([0-9.]+)[×x]\*\*", text)
    return float(match.group(1)) if match else None


def run_row(outcomes: dict[str, Outcome], prefix: str) -> list[str] | None:
    """A row of run.py's own "Against the targets" table: [target, goal, this run, status]."""
    text = outcomes["run"].md or ""
    for line in text.splitlines():
        if line.startswith("| " + prefix):
            return [c.strip() for c in line.strip().strip("|").split(" | ")]
    return None


def from_run(prefix: str) -> Callable[[dict[str, Outcome]], tuple[str, bool | None]]:
    def figure(outcomes: dict[str, Outcome]) -> tuple[str, bool | None]:
        row = run_row(outcomes, prefix)
        if row is None:
            return "no figure in its report", None
        return row[2], "not met" not in row[3]
    return figure


def fused_vs_watermark(step: str) -> Callable[[dict[str, Outcome]], tuple[str, bool | None]]:
    def figure(outcomes: dict[str, Outcome]) -> tuple[str, bool | None]:
        data = outcomes[step].data or {}
        plain = variant(data, "plain")
        row = run_row(outcomes, "capture → load → commit vs watermark") if "run" in outcomes else None
        ref = re.search(r"vs ([0-9,]+)/s", row[2]) if row else None
        if plain is None:
            return "no figure (end_to_end.py's plain variant did not report)", None
        if ref is None:
            return f"{plain['rate']:,.0f}/s (run.py's watermark load not measured in this run: no ratio)", None
        ref_rate = float(ref.group(1).replace(",", ""))
        ratio = plain["rate"] / ref_rate
        return (f"{ratio:.2f}× ({plain['rate']:,.0f} vs {ref_rate:,.0f}/s: end_to_end.py's no-stages variant, fused, "
                f"batch size {data['plan']['batch_size']:,}, against run.py's watermark load "
                "on the same workload)"), ratio >= 1.0
    return figure


def variant(data: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    for r in (data or {}).get("results", []):
        if r.get("variant") == name and ("rate" in r or "lag" in r):
            return r
    return None


def end_to_end_stages(step: str) -> Callable[[dict[str, Outcome]], tuple[str, bool | None]]:
    def figure(outcomes: dict[str, Outcome]) -> tuple[str, bool | None]:
        data = outcomes[step].data or {}
        staged, plain = variant(data, "stages"), variant(data, "plain")
        if staged is None:
            return "no figure (the stages variant did not report)", None
        extra = f"; without stages {plain['rate']:,.0f}/s" if plain else ""
        checked = "" if staged["verify"]["ok"] else "; **its sink check failed**"
        return (f"{staged['rate']:,.0f}/s at batch size {data['plan']['batch_size']:,}{extra}{checked}",
                staged["rate"] >= 50_000 and staged["verify"]["ok"])
    return figure


def lag(name: str, limit: float) -> Callable[[dict[str, Outcome]], tuple[str, bool | None]]:
    def figure(outcomes: dict[str, Outcome]) -> tuple[str, bool | None]:
        r = variant(outcomes["continuous_lag"].data, name)
        if r is None:
            return f"no figure (the {name} variant failed or did not run)", None
        q = r["lag"]
        return (f"p95 {q['p95']:.2f} s (p50 {q['p50']:.2f}, p99 {q['p99']:.2f} s); scheduler's share "
                f"{100 * r['scheduler_share']:.1f} %, Airflow's {100 * r['airflow_share']:.1f} %"), q["p95"] < limit
    return figure


def from_section(step: str, pattern: str, goal: Callable[[float], bool] | None, label: str = "",
                 source: str = "stdout") -> Callable[[dict[str, Outcome]], tuple[str, bool | None]]:
    def figure(outcomes: dict[str, Outcome]) -> tuple[str, bool | None]:
        o = outcomes[step]
        ratio = bold_ratio((o.md if source == "md" else o.stdout) or "", pattern)
        if ratio is None:
            return "no figure in its output", None
        return f"{ratio:.2f}×{label}", goal(ratio) if goal else None
    return figure


def big_tx(outcomes: dict[str, Outcome]) -> tuple[str, bool | None]:
    r = (outcomes["big_transaction"].data or {}).get("results")
    if not r:
        return "no figure", None
    one, spread = r["one_tx"], r["spread"]
    return (f"{r['ratio']:.2f}× ({one['peak_rss_kb'] / 1024:.0f} vs {spread['peak_rss_kb'] / 1024:.0f} MiB, "
            f"{one['changes']:,} changes in one transaction vs spread over small ones, same batch size)",
            r["ratio"] <= 1.10)


TARGETS = (
    Target("1", "capture → load → commit vs watermark load, staged (source changes/s)", "≥ 1.0×", "run",
           from_run("capture → load → commit vs watermark")),
    Target("1", "capture → load → commit vs watermark load, fused, batch size 50,000 (the default)", "≥ 1.0×",
           "end_to_end", fused_vs_watermark("end_to_end"), also=("run",)),
    Target("1", "the same, fused, batch size 200,000 (run.py's, as in the staged row)", "≥ 1.0×",
           "end_to_end_200k", fused_vs_watermark("end_to_end_200k"), also=("run",)),
    Target("2", "capture vs raw fetch of the pgoutput stream", "≥ 0.5×", "run",
           from_run("capture: changes decoded")),
    Target("2", "a burst backlog drains in linear time: seconds per change, 5M vs 1M (quadratic would be ≈ 5×)",
           "≤ 1.25× (1.0× is linear)", "burst_backlog_linear",
           from_section("burst_backlog_linear", r"Seconds per change, [0-9,]+ vs [0-9,]+:", lambda x: x <= 1.25)),
    Target("3", "end to end: capture → 3 rules → 5 expectations → merge → commit, batch size 50,000",
           "≥ 50,000 changes/s", "end_to_end", end_to_end_stages("end_to_end")),
    Target("3", "the same, batch size 200,000", "≥ 50,000 changes/s", "end_to_end_200k",
           end_to_end_stages("end_to_end_200k")),
    Target("4", "continuous mode, 1,000 changes/s for 5 min: p95 commit-to-sink lag, staged", "< 15 s",
           "continuous_lag", lag("staged", 15.0)),
    Target("4", "the same, fused (one batch per run)", "< 5 s", "continuous_lag", lag("fused", 5.0)),
    Target("4", "the same, fused with `loop_seconds` (one run loops over batches)", "< 5 s", "continuous_lag",
           lag("loop", 5.0)),
    Target("5", "parallel initial snapshot: 2 key ranges vs 1, rows/s", "measured (no target)", "parallel_snapshot",
           from_section("parallel_snapshot", r"2 ranges vs 1, total speed:", None, source="md")),
    Target("6", "peak RSS, burst backlog 10M vs 1M", "≤ 1.10×", "burst_backlog_rss",
           from_section("burst_backlog_rss", r"Peak RSS, [0-9,]+ vs [0-9,]+:", lambda x: x <= 1.10)),
    Target("6", "peak RSS, backlog 1M vs 100k (DESIGN §6; run.py benchmark 3)", "≤ 1.10×", "run",
           from_run("peak RSS, backlog")),
    Target("6", "peak RSS of one huge transaction vs the same changes in small ones, batch size 50,000",
           "≤ 1.10× (bounded by batch_size)", "big_transaction", big_tx),
    Target("7", "MariaDB capture vs a bare pymysqlreplication loop", "≥ 0.5×", "mysql_capture",
           from_section("mysql_capture", r"Ratio \(b\) / \(a\):", lambda x: x >= 0.5)),
    Target("7", "MongoDB capture vs a bare change-stream loop", "≥ 0.5×", "mongodb_capture",
           from_section("mongodb_capture", r"Ratio \(b\) / \(a\):", lambda x: x >= 0.5)),
)


def target_rows(outcomes: dict[str, Outcome]) -> list[list[str]]:
    rows = []
    for t in TARGETS:
        needed = {t.step, *t.also}
        o = outcomes.get(t.step)
        if o is None or o.returncode is None:
            figure, status = "not run", "not run in this invocation" if o is None else "not run (stopped)"
        else:
            try:
                figure, met = t.figure(outcomes)
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
                figure, met = f"no figure ({type(exc).__name__}: {exc})", None
            if not o.ok:  # a figure it printed before failing is shown, never judged
                figure, status = f"**{o.step.script} failed** (exit {o.returncode}); {figure}", "**failed**"
            elif met is True:
                status = "met"
            elif met is False:
                status = "**not met**"
            elif t.goal.startswith("measured") and not figure.startswith("no figure"):
                status = "measured"
            else:
                status = "no figure"
        rows.append([t.item, t.what, t.goal, f"{figure} ({' + '.join(sorted(needed))})", status])
    return rows


# --- the report --------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] all: {message}", file=sys.stderr, flush=True)


def fmt_load(load: tuple[float, float, float] | None) -> str:
    return "-" if load is None else " / ".join(f"{x:.2f}" for x in load)


def md_table(headers: list[str], rows: list[list[str]], right: tuple[int, ...] = ()) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join("---:" if i in right else "---" for i in range(len(headers))) + " |"]
    return "\n".join([*lines, *("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows)])


def demote(markdown: str) -> str:
    """Headings one level down (the script's section sits under this report's heading for it); fences kept."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,5} ", line):
            line = "#" + line
        out.append(line)
    return "\n".join(out)


def section_of(o: Outcome) -> str:
    """The script's own Markdown: what it wrote, or printed, or (end_to_end.py) what its JSON and stdout hold."""
    kind = o.step.section_from
    if kind == "md":
        text = re.sub(r"<!-- big-tx:(begin|end)[^>]*-->\n?", "", o.md or "")
        if o.step.name == "run":  # its title and its own partial targets table: this report has both
            text = re.sub(r"\A# Benchmarks\n.*?(?=^## Machine and run)", "", text, flags=re.S | re.M)
            text = re.sub(r"^## Against the targets\n.*?(?=^## )", "", text, flags=re.S | re.M)
        return demote(text.strip())
    if kind == "end_to_end":
        return end_to_end_section(o)
    return demote(o.stdout.strip())


def end_to_end_section(o: Outcome) -> str:
    data = o.data or {}
    rows = []
    for r in data.get("results", []):
        if "rate" not in r:
            continue
        parts = r["ours"]["parts"]
        rows.append([r["variant"], f"{r['source_changes']:,}", f"{r['ours']['seconds']:.2f}", f"{r['rate']:,.0f}",
                     ", ".join(f"{k} {v:.2f}" for k, v in parts.items()), fmt_load(tuple(r["before"]["loadavg"])),
                     "equal" if r["verify"]["ok"] else "**failed**"])
    lines = []
    if rows:
        lines += [f"Plan {data.get('plan')}; the timed drain of each variant (source changes ÷ wall time):", "",
                  md_table(["variant", "source changes", "seconds", "changes/s", "parts (s)",
                            "load avg before seeding", "sink check"], rows, right=(1, 2, 3)), ""]
    lines += ["Its report (stdout):", "", "```", o.stdout.strip(), "```"]
    return "\n".join(lines)


def machine_lines(dsn: str, load: tuple[float, float, float]) -> list[str]:
    cpu, ram = "?", "?"
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   "?")
        ram = next((f"{int(line.split()[1]) / 2**20:.1f}" for line in open("/proc/meminfo")
                    if line.startswith("MemTotal:")), "?")
    except OSError:
        pass
    try:
        import psycopg

        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            pg = f"PostgreSQL {conn.execute('SHOW server_version').fetchone()[0]}"  # type: ignore[index]
    except Exception as exc:  # the report still gets written
        pg = f"PostgreSQL not reachable at the start ({type(exc).__name__})"

    def git(*argv: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *argv], capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "airflow_provider_cdc", "bench", "dags")
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    busy = " (**busy**: other work ran at the same time, figures are noisy)" if load[0] > 0.5 else ""
    return [f"- machine: {nproc} cores ({cpu}), {ram} GiB RAM, load average at the start {fmt_load(load)}{busy}; "
            f"{pg} (`{dsn}`), on the same machine; Python {platform.python_version()}",
            f"- code measured: commit {git('rev-parse', '--short', 'HEAD')}"
            + (" with uncommitted changes in airflow_provider_cdc/, bench/ or dags/" if dirty else "")]


def render(outcomes: dict[str, Outcome], args: argparse.Namespace, started: dt.datetime, seconds: float,
           load: tuple[float, float, float], machine: list[str], stopped: str | None) -> str:
    quick = " (**quick**: every script at its smoke size, a check of the wiring: these figures do not measure the " \
            "targets)" if args.quick else ""
    lines = [
        "# Benchmarks: every target of issue 12 in one run",
        "",
        f"Written by `bench/all.py` (`make bench-all`): the benchmark scripts one after another, each in a process of "
        f"its own, in one invocation{quick}. Each figure below comes from this run; the sections after the step "
        "table are the scripts' own reports.",
        "",
        "## Against the targets",
        "",
        md_table(["item", "target (issue 12)", "goal", "this run (measured by)", "status"], target_rows(outcomes)),
        "",
        "Goals this report sets where the issue gives none in numbers: *linear* is taken as at most 1.25× the seconds "
        "per change of the smaller burst; *bounded by batch_size* as the one-transaction drain's peak RSS within "
        "1.10× of the same changes spread over small transactions at the same batch size. The fused rows divide "
        "end_to_end.py's no-stages (fused) rate, at its batch size, by run.py's watermark load on the same workload "
        "(two scripts of this run, not one script's same-run pair). Where a target is not met, its script's section "
        "below has the breakdown of its time.",
        "",
        "## Machine and run",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC, whole run {seconds / 60:.1f} min"
        + (f"; **stopped** ({stopped}) before the end" if stopped else ""),
        *machine,
        f"- command: `{display([sys.executable, str(BENCH_DIR / 'all.py'), *sys.argv[1:]])}`",
        "- between the steps: " + (f"each waited for a 1-minute load average under {args.max_load}"
                                   if args.max_load > 0 else "no wait (`--max-load` not given)"),
        "",
        md_table(["step", "command", "start (UTC)", "end (UTC)", "minutes", "load avg before (1/5/15)", "exit"],
                 [[o.step.name, f"`{display(o.argv, Path(args.work))}`",
                   f"{o.started:%H:%M:%S}" if o.started else "-", f"{o.ended:%H:%M:%S}" if o.ended else "-",
                   f"{o.seconds / 60:.1f}" if o.started else "-",
                   fmt_load(o.loadavg) + (f" (after {o.waited:.0f} s waiting)" if o.waited >= 1 else ""),
                   "not run" if o.returncode is None else str(o.returncode) if o.ok else f"**{o.returncode}**"]
                  for o in outcomes.values()], right=(4,)),
        "",
        "`$WORK` is a temporary folder of this run: run.py and big_transaction.py write their reports there, never "
        "into BENCHMARKS.md.",
        "",
    ]
    for o in outcomes.values():
        lines += [f"## {o.step.title} — `bench/{o.step.script}`", ""]
        if o.returncode is None:
            lines += ["Not run: the run was stopped before it.", ""]
            continue
        if not o.ok:
            lines += [f"**Failed** (exit {o.returncode} after {o.seconds / 60:.1f} min). The last lines of its "
                      "stderr:", "", "```", *o.stderr_tail, "```", ""]
        section = section_of(o)
        if section.strip() and section.strip() != "```\n```":
            lines += [section, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# --- main --------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="every script at its smoke size (a check of the wiring); writes to a temporary file "
                             "unless --output is given")
    parser.add_argument("--only", help="a subset, comma-separated: step names (" + ", ".join(s.name for s in STEPS)
                        + ") or script names (burst_backlog: both of its steps)")
    parser.add_argument("--output", help=f"the report (default {DEFAULT_OUTPUT.name}; with --quick a temporary file)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and estimates, run nothing")
    parser.add_argument("--dsn", help=f"PostgreSQL admin connection passed to every script (default theirs, "
                                      f"{DEFAULT_DSN})")
    parser.add_argument("--max-load", type=float, default=0.0,
                        help="before each step, wait (every 30 s, at most 20 min) for the 1-minute load average to "
                             "fall below this (default 0: no wait)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the work folder (each script's stdout, stderr and files) instead of deleting it")
    args = parser.parse_args()
    steps = select_steps(args.only)
    # Nothing of the package or benchlib is imported here: benchlib gives a process a private AIRFLOW_HOME and
    # the package pulls in Airflow and pyarrow, which every script does for itself in its own process.
    args.work = tempfile.mkdtemp(prefix="cdc-bench-all-")
    work = Path(args.work)
    outcomes = {s.name: Outcome(s, step_argv(s, args.quick, work, args.dsn)) for s in steps}
    if args.dry_run:
        shutil.rmtree(work, ignore_errors=True)
        report = args.output or ("a temporary file (BENCHMARKS-all-quick-*.md)" if args.quick else DEFAULT_OUTPUT)
        print(f"# {len(steps)} steps, {'quick (smoke sizes)' if args.quick else 'full size'}, one after another "
              f"(cwd {REPO_ROOT}; $WORK is a temporary folder); report: {report}")
        for o in outcomes.values():
            print(f"\n# {o.step.name}: {o.step.title}\n#   estimate at full size: {o.step.estimate}")
            print(display(o.argv, work))
        print(f"\n# estimated at full size, all {len(steps)} steps: about {sum(s.minutes for s in steps):.0f} min "
              "(from the run times BENCHMARKS.md records; more when a step waits for a quiet machine)")
        return 0
    if args.output:
        output = Path(args.output)
    elif args.quick:
        fd, name = tempfile.mkstemp(prefix="BENCHMARKS-all-quick-", suffix=".md")
        os.close(fd)
        output = Path(name)
    else:
        output = DEFAULT_OUTPUT

    signal.signal(signal.SIGTERM, _on_signal)
    started_at = dt.datetime.now(dt.timezone.utc)
    started = time.monotonic()
    load = os.getloadavg()
    machine = machine_lines(args.dsn or DEFAULT_DSN, load)
    log(f"{len(steps)} steps ({', '.join(outcomes)}), {'quick' if args.quick else 'full size'}; load average "
        f"{fmt_load(load)}; work folder {work}; report {output}")
    if load[0] > 0.5:
        log("warning: the machine is busy (load average above 0.5): the figures will be noisy")
    stopped = None
    try:
        for o in outcomes.values():
            try:
                run_step(o, work, args.max_load)
            except OSError as exc:  # the script could not even start: note it and go on
                o.returncode, o.stderr_tail = 127, [f"{type(exc).__name__}: {exc}"]
    except (Stopped, KeyboardInterrupt) as exc:
        stopped = str(exc) or type(exc).__name__
        log(f"stopped ({stopped}); writing the report of what ran")
    finally:
        report = render(outcomes, args, started_at, time.monotonic() - started, load, machine, stopped)
        output.write_text(report)
        if args.keep_logs:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    failed = [o.step.name for o in outcomes.values() if o.returncode not in (0, None)]
    log(f"wrote {output} after {(time.monotonic() - started) / 60:.1f} min"
        + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 130 if stopped else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
