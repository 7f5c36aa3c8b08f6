"""The initial snapshot of one large table, read serially (1 key range) and by two range stagers in parallel
(2 key ranges, issue 12 item 5).

    .venv/bin/python bench/parallel_snapshot.py [--rows N | --quick] [--batch-size B] [--dsn URL] [--write FILE]

One table of ``--rows`` rows (default 2,000,000; ``--quick``: 200,000) in the shape of benchmark 1 is seeded once in a
fresh source database and snapshotted twice into a fresh PgSink database, positions in memory, batches and chunks
staged under a temporary ``file://`` root:

- ``snapshot_ranges: 1``: capture_stage -> load_stage -> commit_stage (staged mode) until the position has no pending
  snapshot; the capture reads the table itself, ``batch_size`` rows a batch.
- ``snapshot_ranges: 2``: *planning*, the first round (the capture splits the key space in two and stores the plan
  with the position, nothing else); *staging*, two OS processes started together, as two Airflow workers would run
  the mapped ``snapshot_range`` task, each calling :func:`airflow_provider_cdc.parallel_snapshot.stage_range` for its
  range (chunks of ``batch_size // 2`` rows, each with its WAL watermark); *emission*, rounds until the snapshot is
  complete (one staged chunk a batch, in watermark order).

A stager process imports, builds its source and sink, connects, and then waits for the parent's "go", so that both
start reading at the same moment; that start-up is shown apart and is not in the totals (the serial run pays no
process start-up either). The slot and publication are created before any clock starts, and a ``CHECKPOINT`` runs
before each variant. A 2,000-row snapshot runs both ways first, untimed: the first read through Airflow's
``ObjectStoragePath`` loads Airflow's plugins (seconds), which would otherwise fall on whichever variant runs first.
After each variant the sink table is compared with the source: ``count(*)`` and an md5 over every row's text in key
order (:func:`benchlib.table_checksum`).

Besides wall seconds it samples CPU: this process's own (``getrusage``), the PostgreSQL backends serving the
benchmark (``/proc/<pid>/stat`` of the client backends of its two databases; each stager reads its own backend's),
and the whole machine's busy time (``/proc/stat``), so that the "where the time goes" paragraph rests on figures.

It prints a Markdown section for BENCHMARKS.md (``--write FILE`` also writes it to FILE; BENCHMARKS.md itself is
edited by hand). Its databases (``cdc_bench_psnap_src``, ``cdc_bench_psnap_sink``) and slot are dropped at the end,
also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib  # sets a private AIRFLOW_HOME before Airflow is imported

from airflow_provider_cdc import parallel_snapshot
from airflow_provider_cdc.connectors.postgres.snapshot_ranges import chunk_rows

SRC_DB, SINK_DB = "cdc_bench_psnap_src", "cdc_bench_psnap_sink"
TABLE, SLOT, PUB = "bench_psnap", "cdc_bench_psnap", "cdc_bench_psnap_pub"
SOURCE_ID, SINK_ID = "bench_psnap", "bench_psnap_sink"
WARM_TABLE, WARM_ROWS = "bench_psnap_warmup", 2_000
COLUMNS = ("id", "a", "b", "c", "d")
FULL_ROWS, QUICK_ROWS = 2_000_000, 200_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- connectors ----------------------------------------------------------------------------------------------------


def make_source(src_dsn: str, ranges: int, staging_url: str, *, table: str = TABLE, slot: str = SLOT,
                publication: str = PUB, source_id: str = SOURCE_ID) -> benchlib.TimedPgSource:
    # snapshot_range_min_rows=1: the table is split whatever --rows is (the run checks that it was).
    return benchlib.TimedPgSource(src_dsn, source_id=source_id, tables=[("public", table)], slot_name=slot,
                                  publication_name=publication, snapshot="initial", snapshot_ranges=ranges,
                                  snapshot_range_min_rows=1, staging_url=staging_url)


def make_sink(sink_dsn: str) -> benchlib.TimedPgSink:
    return benchlib.TimedPgSink(sink_dsn, sink_id=SINK_ID, target_schema="public", ledger_schema="public")


# --- CPU sampling --------------------------------------------------------------------------------------------------


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (None when it is gone or not readable)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15 of stat)


def machine_busy() -> float:
    """CPU seconds the whole machine was busy so far (every core; idle and iowait excluded)."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


def backend_pids(admin: Any) -> list[int]:
    """The client backends connected to the benchmark's databases (the admin connection is not one of them)."""
    rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname IN (%s, %s) AND backend_type = "
                         "'client backend'", (SRC_DB, SINK_DB)).fetchall()
    return [pid for (pid,) in rows]


class Meter:
    """Wall seconds, this process's CPU, the bench databases' backends' CPU and the machine's busy CPU of a phase."""

    def __init__(self, admin: Any) -> None:
        self.backends = {pid: process_cpu(pid) for pid in backend_pids(admin)}
        self.busy, self.cpu, self.wall = machine_busy(), own_cpu(), time.perf_counter()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall
        busy, cpu = machine_busy() - self.busy, own_cpu() - self.cpu
        # A backend that ended meanwhile (a stager's) is left out: its last figures are gone with it.
        after = {pid: process_cpu(pid) for pid in self.backends}
        spent = [a - b for pid, b in self.backends.items() if b is not None and (a := after[pid]) is not None]
        return {"seconds": wall, "own_cpu": cpu, "backend_cpu": sum(spent) if spent else None,
                "machine_busy": busy, "cores_busy": busy / wall if wall > 0 else 0.0}


# --- the staged pipeline, round by round -----------------------------------------------------------------------------


def phase(admin: Any, source: Any, sink: Any, positions: benchlib.MemoryPositions, store: Any, *, batch_size: int,
          until: Any, limit: int) -> dict[str, Any]:
    """One timed stretch of rounds, with the connectors' own stopwatches (capture, batch write, sink apply)."""
    before = {"capture": source.seconds["capture"], "write": store.seconds["write"], "apply": sink.seconds["apply"]}
    meter = Meter(admin)
    totals = benchlib.drain(source, sink, positions, store, batch_size=batch_size, until=until, limit=limit)
    result = meter.stop()
    stages = totals["stage_seconds"]
    result.update({
        "rounds": totals["rounds"], "batches": totals["batches"], "changes": totals["changes"],
        "capture": stages["capture_stage"], "load": stages["load_stage"], "commit": stages["commit_stage"],
        "source_capture": source.seconds["capture"] - before["capture"],
        "batch_write": store.seconds["write"] - before["write"], "sink_apply": sink.seconds["apply"] - before["apply"],
    })
    return result


# --- range stagers: separate OS processes -------------------------------------------------------------------------


def stager_main(index: int, config_path: str) -> int:
    """A child: build the source and sink, connect, say "ready", wait for "go" on stdin, stage range ``index``,
    print the result as one line of JSON."""
    config = json.loads(Path(config_path).read_text())
    source = make_source(config["src_dsn"], config["ranges"], config["staging_url"])
    sink = make_sink(config["sink_dsn"])
    positions = benchlib.MemoryPositions()
    positions.set(SOURCE_ID, config["position"], batch_id=None)
    try:
        pid = source.conn.info.backend_pid
        # ObjectStoragePath (Airflow's) is imported on first use; a worker has it loaded already.
        source.range_store(config["position"]["snapshot"]["ranges"]).is_done(index)
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 2
        cpu, backend, started, t0 = own_cpu(), process_cpu(pid), time.time(), time.perf_counter()
        result = parallel_snapshot.stage_range(source, sink, positions, index, config["batch_size"])
        seconds = time.perf_counter() - t0
        backend_after = process_cpu(pid)
        print(json.dumps({"result": result, "seconds": seconds, "started": started, "ended": time.time(),
                          "own_cpu": own_cpu() - cpu,
                          "backend_cpu": None if backend is None or backend_after is None else backend_after - backend,
                          "peak_rss_kb": benchlib.rss_kb()}), flush=True)
    finally:
        source.close()
        sink.close()
    return 0


def run_stagers(admin: Any, work: Path, config: dict[str, Any], count: int) -> dict[str, Any]:
    """Start one stager process per range, wait until each is ready, release them together, wait for all."""
    config_path = work / "stager.json"
    config_path.write_text(json.dumps(config))
    procs: list[subprocess.Popen[str]] = []
    logs: list[IO[str]] = []
    try:
        launched = time.perf_counter()
        for index in range(count):
            err = open(work / f"stager-{index}.log", "w")  # closed below
            logs.append(err)
            procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--stager", str(index), "--stager-config",
                 str(config_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                start_new_session=True))
        startup = []
        for index, proc in enumerate(procs):
            assert proc.stdout is not None and proc.stdin is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"stager {index} did not start:\n{stager_log(work, index)}")
            startup.append(time.perf_counter() - launched)
        meter = Meter(admin)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            proc.stdin.close()
        outputs = []
        for proc in procs:  # the result line, read before the process exits (its tear-down is not staging)
            assert proc.stdout is not None
            outputs.append(proc.stdout.readline())
        result = meter.stop()
        for index, proc in enumerate(procs):
            if proc.wait() != 0 or not outputs[index].strip():
                raise RuntimeError(f"stager {index} failed ({proc.returncode}):\n{stager_log(work, index)}")
    except BaseException:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        raise
    finally:
        for fh in logs:
            fh.close()
    children = [json.loads(out) for out in outputs]
    result["startup"] = startup
    result["ranges"] = children
    result["span"] = max(c["ended"] for c in children) - min(c["started"] for c in children)
    return result


def stager_log(work: Path, index: int) -> str:
    path = work / f"stager-{index}.log"
    return path.read_text()[-4000:] if path.exists() else "(no log)"


# --- one variant -----------------------------------------------------------------------------------------------------


def reset_sink(admin_dsn: str) -> None:
    """A fresh sink database and no slot (the publication stays: it is the same for both variants)."""
    benchlib.drop_slot(admin_dsn, SLOT)
    benchlib.drop_bench_databases(admin_dsn, (SINK_DB,))
    with benchlib.admin_connect(admin_dsn) as conn:
        conn.execute(f"CREATE DATABASE {SINK_DB}")


def warm_up(admin_dsn: str, work: Path) -> None:
    """Snapshot a small table both ways first, untimed. Some code paths import modules on first use: the first read
    through Airflow's ``ObjectStoragePath`` loads Airflow's plugins (the provider's REST app among them), several
    seconds here, which would otherwise be charged to whichever variant runs first."""
    src_dsn, sink_dsn = benchlib.db_dsn(admin_dsn, SRC_DB), benchlib.db_dsn(admin_dsn, SINK_DB)
    with benchlib.admin_connect(src_dsn) as conn:
        benchlib.seed_changes_table(conn, WARM_TABLE, WARM_ROWS)
        conn.execute(f"CREATE PUBLICATION {PUB}_warmup FOR TABLE {WARM_TABLE}")
    for ranges in (1, 2):
        reset_sink(admin_dsn)
        source = make_source(src_dsn, ranges, f"file://{work}/warmup-ranges-{ranges}", table=WARM_TABLE,
                             slot=f"{SLOT}_warmup", publication=f"{PUB}_warmup", source_id=f"{SOURCE_ID}_warmup")
        sink = make_sink(sink_dsn)
        try:
            benchlib.drain(source, sink, benchlib.MemoryPositions(), benchlib.TimedBatchStore(
                root=f"file://{work}/warmup-batches-{ranges}"), batch_size=WARM_ROWS // 4,
                until=lambda p: "snapshot" not in p, limit=50)
        finally:
            source.close()
            sink.close()
        benchlib.drop_slot(admin_dsn, f"{SLOT}_warmup")


def one_variant(admin_dsn: str, ranges: int, rows: int, batch_size: int, work: Path,
                source_sum: tuple[int, str]) -> dict[str, Any]:
    reset_sink(admin_dsn)
    src_dsn, sink_dsn = benchlib.db_dsn(admin_dsn, SRC_DB), benchlib.db_dsn(admin_dsn, SINK_DB)
    staging_url = f"file://{work}/ranges-{ranges}"
    source = make_source(src_dsn, ranges, staging_url)
    sink = make_sink(sink_dsn)
    store = benchlib.TimedBatchStore(root=f"file://{work}/batches-{ranges}")
    positions = benchlib.MemoryPositions()
    admin = benchlib.admin_connect(admin_dsn)
    limit = 4 * (rows // chunk_rows(batch_size) + 1) + 10
    result: dict[str, Any] = {"ranges": ranges}
    try:
        source.prepare()  # the publication and the slot, before any clock starts
        benchlib.checkpoint(admin_dsn)
        result["loadavg"] = os.getloadavg()
        if ranges > 1:
            benchlib.log(f"{ranges} ranges: planning")
            result["planning"] = phase(admin, source, sink, positions, store, batch_size=batch_size, limit=1,
                                       until=lambda p: bool((p.get("snapshot") or {}).get("ranges")))
            position = positions.get(SOURCE_ID) or {}
            plan = position["snapshot"]["ranges"]
            assert result["planning"]["changes"] == 0, result["planning"]
            result["splits"] = plan["splits"]
            count = len(plan["emitted"])
            benchlib.log(f"{ranges} ranges: split at {plan['splits']}; staging {count} ranges in {count} processes")
            result["staging"] = run_stagers(admin, work, {
                "src_dsn": src_dsn, "sink_dsn": sink_dsn, "ranges": ranges, "staging_url": staging_url,
                "batch_size": batch_size, "position": position}, count)
            staged = sum(r["result"]["rows"] for r in result["staging"]["ranges"])
            assert staged == rows, f"the stagers staged {staged:,} of {rows:,} rows"
        benchlib.log(f"{ranges} range(s): emission (capture -> load -> commit until the snapshot is complete)")
        result["emission"] = phase(admin, source, sink, positions, store, batch_size=batch_size, limit=limit,
                                   until=lambda p: "snapshot" not in p)
        assert result["emission"]["changes"] == rows, f"emitted {result['emission']['changes']:,} of {rows:,} rows"
    finally:
        admin.close()
        source.close()
        sink.close()
    result["total"] = sum(result[k]["seconds"] for k in ("planning", "staging", "emission") if k in result)
    with benchlib.admin_connect(sink_dsn) as conn:
        sink_sum = benchlib.table_checksum(conn, TABLE, COLUMNS)
    result["verify"] = {"source": source_sum, "sink": sink_sum, "equal": sink_sum == source_sum}
    benchlib.log(f"{ranges} range(s): total {result['total']:.1f}s; sink {sink_sum[0]:,} rows "
                 f"{'equal to' if result['verify']['equal'] else 'DIFFERENT from'} the source")
    return result


# --- report ----------------------------------------------------------------------------------------------------------


def cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(results: list[dict[str, Any]], info: dict[str, Any], rows: int, batch_size: int, table_mib: float,
           command: str) -> str:
    from run import fmt_int, md_table  # the runner's table helpers

    load = info["loadavg"]
    busy = (" (**busy**: other work ran at the same time, the figures are noisy)" if load[0] > 0.5 else " (idle)")
    nproc = info["nproc"]
    settings = ", ".join(f"{k} {v}" for k, v in info["pg_settings"].items())
    by = {r["ranges"]: r for r in results}
    one, two = by.get(1), by.get(2)
    lines = [
        "## 14. Parallel initial snapshot, 1 vs 2 key ranges (`bench/parallel_snapshot.py`)", "",
        f"- command: `{command}`; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {nproc} cores ({info.get('cpu', '?')}), {info.get('ram_gib', '?')} GiB RAM, **load average at "
        f"start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}**{busy}; PostgreSQL {info['pg_version']} on the same "
        f"machine ({settings}); code measured: {info['code']}",
        f"- workload: table `{TABLE} (id bigint primary key, a int, b text, c numeric(12,2), d timestamptz)` with "
        f"{fmt_int(rows)} rows ({table_mib:,.0f} MiB; benchmark 1's rows), seeded once in a fresh source database "
        "and `VACUUM ANALYZE`d; nothing writes to it during the snapshots. Each variant: a fresh PgSink database on "
        "the same server, slot and publication created before the clock starts, `CHECKPOINT`, positions in memory, "
        f"batches and chunks staged under a temporary `file://` root, batch size {fmt_int(batch_size)}; before both, "
        f"an untimed {fmt_int(WARM_ROWS)}-row snapshot each way (lazy imports happen there, not in the first variant)",
        f"- 1 range: capture_stage -> load_stage -> commit_stage until the position has no pending snapshot; the "
        f"capture reads {fmt_int(batch_size)} rows a batch itself",
        "- 2 ranges: *planning* is the first round (the capture splits the keys at the row halfway through the "
        "planner's row estimate and stores the plan with the position); *staging* is two OS processes released "
        f"together, each calling `parallel_snapshot.stage_range` for its range "
        f"({fmt_int(chunk_rows(batch_size))}-row chunks, each with its WAL watermark, Parquet); *emission* is rounds "
        "until the snapshot is complete, one chunk a batch. A stager's process start-up (imports, connecting) "
        "happens before the release and is not in the totals", "",
    ]
    header = ["snapshot_ranges", "load avg at its start", "planning s", "staging s (wall)",
              "per range: s, rows, chunks", "emission s (batches)", "total s", "rows/s"]
    table = []
    for r in results:
        if "staging" in r:
            st = r["staging"]
            per = "; ".join(f"r{c['result']['range']}: {c['seconds']:.1f} s, {fmt_int(c['result']['rows'])}, "
                            f"{c['result']['chunks']}" for c in st["ranges"])
            planning, staging = f"{r['planning']['seconds']:.2f}", f"{st['seconds']:.1f}"
        else:
            per, planning, staging = "-", "-", "-"
        table.append([str(r["ranges"]), f"{r['loadavg'][0]:.2f}", planning, staging, per,
                      f"{r['emission']['seconds']:.1f} ({r['emission']['batches']})", f"**{r['total']:.1f}**",
                      fmt_int(rows / r["total"])])
    lines += [md_table(header, table, left=(4,)), ""]
    if one and two:
        lines += [f"2 ranges vs 1, total speed: **{one['total'] / two['total']:.2f}×** (rows/s with 2 ranges ÷ rows/s "
                  "with 1).", ""]
    if two and "staging" in two:
        st = two["staging"]
        startup = ", ".join(f"{s:.1f}" for s in st["startup"])
        peaks = ", ".join(f"{c['peak_rss_kb'] / 1024:.0f}" for c in st["ranges"])
        lines += [f"Stager start-up, not counted: {startup} s from launch to ready; the two `stage_range` calls "
                  f"spanned {st['span']:.1f} s (first start to last end); peak RSS per stager {peaks} MiB.", ""]
    header = ["snapshot_ranges", "phase", "wall s", "capture s (of it: batch write)", "load s (sink apply)",
              "commit s", "this process CPU s", "its DB backends CPU s", f"machine busy, cores of {nproc}"]
    table = []
    for r in results:
        for name in ("planning", "emission"):
            if name not in r:
                continue
            p = r[name]
            table.append([str(r["ranges"]), name, f"{p['seconds']:.1f}",
                          f"{p['capture']:.1f} ({p['batch_write']:.1f})", f"{p['load']:.1f} ({p['sink_apply']:.1f})",
                          f"{p['commit']:.1f}", cpu(p["own_cpu"]), cpu(p["backend_cpu"]), f"{p['cores_busy']:.2f}"])
            if name == "planning" and "staging" in r:
                st = r["staging"]
                table.append([str(r["ranges"]), "staging", f"{st['seconds']:.1f}", "-", "-", "-",
                              " + ".join(cpu(c["own_cpu"]) for c in st["ranges"]) + " (stagers)",
                              " + ".join(cpu(c["backend_cpu"]) for c in st["ranges"]), f"{st['cores_busy']:.2f}"])
    lines += ["Where each phase spent its time (the connectors' stopwatches; CPU from `getrusage` and `/proc`):", "",
              md_table(header, table, left=(1,)), ""]
    header = ["snapshot_ranges", "source rows", "source md5", "sink rows", "sink md5", "verdict"]
    table = [[str(r["ranges"]), fmt_int(r["verify"]["source"][0]), f"`{r['verify']['source'][1]}`",
              fmt_int(r["verify"]["sink"][0]), f"`{r['verify']['sink'][1]}`",
              "equal" if r["verify"]["equal"] else "**DIFFERENT**"] for r in results]
    lines += ["Verification after each run (`count(*)` and md5 over every row's text in key order, UTC):", "",
              md_table(header, table), ""]
    if one and two:
        lines += ["Where the time goes:", "", where_the_time_goes(one, two, rows, nproc), ""]
    return "\n".join(lines)


def where_the_time_goes(one: dict[str, Any], two: dict[str, Any], rows: int, nproc: int) -> str:
    """A paragraph built from the figures of this run (it states what was measured, not a prepared conclusion)."""
    from run import fmt_int, rate

    e1, e2, st = one["emission"], two["emission"], two["staging"]
    per_range = ", ".join(f"{c['seconds']:.1f} s ({rate(c['result']['rows'], c['seconds'])} rows/s)"
                          for c in st["ranges"])
    stager_cpu = sum(c["own_cpu"] for c in st["ranges"])
    backend = [c["backend_cpu"] for c in st["ranges"]]
    backends = "an unknown amount" if any(b is None for b in backend) else f"{sum(backend):.1f} s"
    saved = one["total"] - two["total"]
    text = (
        f"With 1 range the capture reads the table itself: {e1['capture']:.1f} s in capture "
        f"({e1['source_capture']:.1f} s in `PgSource.capture`: COPY out, CSV parse, portable form; "
        f"{e1['batch_write']:.1f} s staging the batches), {e1['load']:.1f} s in load ({e1['sink_apply']:.1f} s in the "
        f"sink's apply: COPY, MERGE, ledger; the rest reading the staged batches back) and {e1['commit']:.1f} s in "
        f"commit; the machine was {e1['cores_busy']:.2f} of {nproc} cores busy. With 2 ranges the source read moves "
        f"to the stagers: {st['seconds']:.1f} s of wall time for both (per range {per_range}), {stager_cpu:.1f} s of "
        f"CPU in the two stager processes (CSV parse, portable form, Parquet) and {backends} in their two server "
        f"backends (COPY out), with the machine {st['cores_busy']:.2f} of {nproc} cores busy; the serial capture "
        f"read the same {fmt_int(rows)} rows in {e1['source_capture']:.1f} s "
        f"({rate(rows, e1['source_capture'])} rows/s), the two stagers together at {rate(rows, st['seconds'])} "
        f"rows/s. Emission then took {e2['seconds']:.1f} s: {e2['capture']:.1f} s in capture (each staged chunk "
        f"read back, the stream read up to its watermark, the batch staged), {e2['load']:.1f} s in load "
        f"({e2['sink_apply']:.1f} s in the sink's apply), {e2['commit']:.1f} s in commit. The load into the sink runs "
        f"one batch at a time in both variants ({e1['load']:.1f} s and {e2['load']:.1f} s): only the source read is "
        f"parallel. In all, 2 ranges {'saved' if saved >= 0 else 'cost'} {abs(saved):.1f} s "
        f"({one['total']:.1f} s -> {two['total']:.1f} s, planning {two['planning']['seconds']:.2f} s included)."
    )
    if nproc <= 2:
        text += (
            f" On {nproc} cores the two stagers, the two backends serving them and the server's background work "
            "share the same cores, so the stagers compete for CPU instead of adding it; stagers on other workers "
            "would take their client CPU off this machine, while the backends' COPY out stays on the source server."
        )
    return text


# --- main ------------------------------------------------------------------------------------------------------------


def table_size_mib(src_dsn: str) -> float:
    with benchlib.admin_connect(src_dsn) as conn:
        row = conn.execute("SELECT pg_total_relation_size(%s)", (TABLE,)).fetchone()
        assert row is not None  # a SELECT without FROM returns one row
        return int(row[0]) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help=f"table rows (default {FULL_ROWS:,})")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run of {QUICK_ROWS:,} rows")
    parser.add_argument("--batch-size", type=int, default=200_000)
    parser.add_argument("--dsn", default=benchlib.DEFAULT_DSN, help="an administrative connection to the server")
    parser.add_argument("--write", metavar="FILE", help="also write the Markdown section to FILE")
    parser.add_argument("--stager", type=int, help=argparse.SUPPRESS)  # a child: stage this range
    parser.add_argument("--stager-config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stager is not None:
        return stager_main(args.stager, args.stager_config)
    rows = args.rows if args.rows is not None else QUICK_ROWS if args.quick else FULL_ROWS
    info = benchlib.machine_info(args.dsn)
    benchlib.log(f"parallel snapshot: {rows:,} rows, batch size {args.batch_size:,}; load average "
                 f"{info['loadavg'][0]:.2f}; code {info['code']}")
    results = []
    try:
        benchlib.drop_bench_databases(args.dsn, (SRC_DB, SINK_DB))
        with benchlib.admin_connect(args.dsn) as conn:
            conn.execute(f"CREATE DATABASE {SRC_DB}")
        src_dsn = benchlib.db_dsn(args.dsn, SRC_DB)
        with benchlib.admin_connect(src_dsn) as conn:
            benchlib.log(f"seeding {rows:,} rows")
            benchlib.seed_changes_table(conn, TABLE, rows)
            conn.execute(f"CREATE PUBLICATION {PUB} FOR TABLE {TABLE}")
            source_sum = benchlib.table_checksum(conn, TABLE, COLUMNS)
        table_mib = table_size_mib(src_dsn)
        with tempfile.TemporaryDirectory(prefix="cdc-bench-psnap-") as work:
            benchlib.log(f"warm-up: a {WARM_ROWS:,}-row snapshot with 1 and with 2 ranges (untimed)")
            warm_up(args.dsn, Path(work))
            for ranges in (1, 2):
                results.append(one_variant(args.dsn, ranges, rows, args.batch_size, Path(work), source_sum))
    finally:
        benchlib.drop_bench_databases(args.dsn, (SRC_DB, SINK_DB))
    section = render(results, info, rows, args.batch_size, table_mib,
                     "bench/parallel_snapshot.py " + " ".join(sys.argv[1:]))
    print(section)
    if args.write:
        Path(args.write).write_text(section)
    return 0 if all(r["verify"]["equal"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
