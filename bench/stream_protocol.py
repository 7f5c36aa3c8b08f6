"""Reading a logical slot through the streaming replication protocol, against the peek that capture uses.

    .venv/bin/python bench/stream_protocol.py [--quick] [--dsn URL] [--pg18] [--json FILE] [--write FILE]

Why capture peeks (``pg_logical_slot_peek_binary_changes``) instead of streaming (``START_REPLICATION``): this
measures both on one workload, benchmark 1's (``benchlib.seed_changes_table`` + ``benchlib.changes_workload``:
1,000,000 changes in transactions of 10,000 on a table seeded with 500,000 rows; ``--quick``: 100,000 in
transactions of 1,000), in a database of its own (``cdc_bench_stream``) with two slots created before the workload:

1. the peek raw fetch, the reference of benchmark 1 (``benchlib.raw_fetch``: every message through a named cursor,
   counted, not decoded; best of 2), with this process's CPU and that of the backend that ran the peek;
2. the streaming protocol with no decoding: a psycopg 3 connection opened with ``replication="database"``,
   ``START_REPLICATION SLOT … LOGICAL <the slot's creation LSN> (proto_version '1', publication_names …)``, every
   CopyData read with ``pgconn.get_copy_data(0)`` and counted; messages/s, this process's CPU (``getrusage``) and
   the walsender's (user and system seconds from ``/proc/<pid>/stat`` of ``pg_replication_slots.active_pid``, read
   just before the connection closes);
3. the same with our columnar decode (``columnar.decode_columnar``) of the received messages, in batches of 200,000
   changes cut at commits, the decoder's state (relations, seq, schemas) carried from batch to batch;
4. ``pg_recvlogical`` (the server's own C client, from the server's bin directory) on the second slot, to
   ``/dev/null`` with ``--endpos`` at the workload's end; its CPU from ``getrusage(RUSAGE_CHILDREN)``, its walsender's
   sampled from ``/proc`` every 20 ms (the last sample before it ended). It confirms positions, hence its own slot.

The streaming reads never send standby-status feedback, so the slot is not consumed and each run starts from the
same point (its ``confirmed_flush_lsn`` is checked before each). A read stops when it has as many messages as the
peek returned, or when a keepalive reports the walsender past the workload's end LSN (then the count is checked).

``--pg18`` runs the same on an embedded PostgreSQL 18 as well (``scripts/embedded_pg.py``, data directory in a
temporary folder, stopped and removed at the end). The database and its slots are dropped at the end, also on
failure or SIGTERM. It prints a Markdown section for BENCHMARKS.md (``--write FILE`` also writes it to FILE,
``--json FILE`` the raw figures); BENCHMARKS.md itself is edited by hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(REPO_ROOT))

import benchlib  # noqa: E402  (sets a private AIRFLOW_HOME before Airflow is imported)
import numpy as np  # noqa: E402
import psycopg  # noqa: E402
import pyarrow as pa  # noqa: E402
from benchlib import log  # noqa: E402
from psycopg import pq  # noqa: E402

from airflow_provider_cdc.connectors.postgres import pgoutput  # noqa: E402
from airflow_provider_cdc.connectors.postgres.catalog import Catalog  # noqa: E402
from airflow_provider_cdc.connectors.postgres.columnar import decode_columnar  # noqa: E402
from airflow_provider_cdc.connectors.postgres.decoder import StreamDecoder  # noqa: E402

DB = "cdc_bench_stream"
TABLE, PUB = "bench_changes", "cdc_bench_stream_pub"
SLOT, SLOT_RECV = "cdc_bench_stream", "cdc_bench_stream_recv"
XLOG_DATA, KEEPALIVE = 0x77, 0x6B  # 'w', 'k'
XLOG_HEADER = 25  # 'w', dataStart, walEnd, sendTime
CHANGE_KINDS = (0x49, 0x55, 0x44)  # pgoutput Insert, Update, Delete
COMMIT = 0x43
READ_LIMIT_S = 900.0  # a streaming read that has not finished by then is a failure
SAMPLE_S = 0.02  # pg_recvlogical's walsender: /proc sampling interval


@dataclass(frozen=True)
class Scale:
    name: str
    changes: int
    tx_rows: int
    batch_size: int


FULL = Scale("full", 1_000_000, 10_000, 200_000)
QUICK = Scale("quick", 100_000, 1_000, 20_000)


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")


# --- workload ------------------------------------------------------------------------------------------------------


def prepare(admin_dsn: str, scale: Scale) -> dict[str, Any]:
    """A fresh database, the table seeded, both slots created, then the workload; returns the LSNs and counts."""
    benchlib.drop_bench_databases(admin_dsn, (DB,))
    with benchlib.admin_connect(admin_dsn) as conn:
        conn.execute(f"CREATE DATABASE {DB}")
    dsn = benchlib.db_dsn(admin_dsn, DB)
    seeded = scale.changes // 2
    with benchlib.admin_connect(dsn) as conn:
        log(f"stream: seeding {TABLE} with {seeded:,} rows")
        benchlib.seed_changes_table(conn, TABLE, seeded)
        conn.execute(f"CREATE PUBLICATION {PUB} FOR TABLE {TABLE}")
        start = benchlib.create_slot(conn, SLOT)
        start_recv = benchlib.create_slot(conn, SLOT_RECV)
        log(f"stream: workload of {scale.changes:,} changes in transactions of {scale.tx_rows:,}")
        started = time.perf_counter()
        counts = benchlib.changes_workload(conn, TABLE, seeded=seeded, changes=scale.changes, tx_rows=scale.tx_rows)
        seconds = time.perf_counter() - started
        end = benchlib.wal_lsn(conn)
        wal = benchlib.wal_bytes(conn, start, end)
        conn.execute(f"VACUUM (ANALYZE) {TABLE}")
        conn.execute("CHECKPOINT")
    log(f"stream: workload done in {seconds:.1f}s ({counts}), {wal / 2**20:.0f} MiB of WAL, end {end}")
    return {"dsn": dsn, "start": start, "start_recv": start_recv, "end": end, "counts": counts,
            "seconds": seconds, "wal_bytes": wal, "transactions": scale.changes // scale.tx_rows}


def context_switches(pid: int) -> int | None:
    """Voluntary context switches of a local process so far (``/proc/<pid>/status``): each is a wait, for instance
    for the socket to become writable or readable."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def confirmed_flush(dsn: str, slot: str) -> str | None:
    """The slot's ``confirmed_flush_lsn``, once no walsender holds it (a closed read's walsender exits shortly after
    the connection closes; START_REPLICATION would fail while it is there)."""
    with benchlib.admin_connect(dsn) as conn:
        for _attempt in range(200):
            row = conn.execute("SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots "
                               "WHERE slot_name = %s", (slot,)).fetchone()
            if row is None or not row[1]:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"slot {slot} still active after 10 s")
    return None if row is None else row[0]


# --- the streaming protocol ----------------------------------------------------------------------------------------


class ColumnarBatches:
    """Received pgoutput messages gathered into an Arrow array and decoded columnar, a batch at a time, the decoder's
    state carried from one batch to the next (as consecutive captures would)."""

    def __init__(self, catalog_conn: psycopg.Connection, start: str) -> None:
        self.catalog_conn = catalog_conn
        self.position: dict[str, Any] = {"lsn": start, "seq": 0}
        self.relations: dict[int, Any] = {}
        self.data = bytearray()
        self.lengths: list[int] = []
        self.changes = self.batches = 0
        self.seconds = 0.0  # in decode_columnar and around it (the decoder, the array), not in receiving

    def add(self, message: Any) -> None:
        self.data += message
        self.lengths.append(len(message))

    def flush(self) -> None:
        if not self.lengths:
            return
        started = time.perf_counter()
        offsets = np.zeros(len(self.lengths) + 1, np.int64)
        np.cumsum(self.lengths, out=offsets[1:])
        messages = pa.Array.from_buffers(pa.large_binary(), len(self.lengths),
                                         [None, pa.py_buffer(offsets), pa.py_buffer(bytes(self.data))])
        decoder = StreamDecoder("bench_stream", Catalog(self.catalog_conn), self.position, None, database=DB)
        decoder.relations = dict(self.relations)
        out = decode_columnar(decoder, messages)
        self.relations = dict(out.relations)
        if out.last_end is not None:
            self.position = {"lsn": pgoutput.int_to_lsn(out.last_end), "seq": out.seq, "schemas": out.schemas_seen}
        self.changes += sum(t.num_rows for t in out.tables.values())
        self.batches += 1
        self.data, self.lengths = bytearray(), []
        self.seconds += time.perf_counter() - started


def stream_read(dsn: str, start: str, end: str, expected: int, *, decode: bool, batch_size: int) -> dict[str, Any]:
    """Read the slot from ``start`` through the streaming protocol until ``expected`` messages (or a keepalive past
    ``end``); never sends feedback. With ``decode``, decode the messages columnar in batches of ``batch_size``
    changes (cut at commits)."""
    end_lsn = pgoutput.lsn_to_int(end)
    catalog_conn = psycopg.connect(dsn, autocommit=True)
    repl = psycopg.connect(dsn, replication="database", autocommit=True)
    try:
        pgconn = repl.pgconn
        batches = ColumnarBatches(catalog_conn, start) if decode else None
        messages = pending_changes = keepalives = 0
        stopped_by = "message count"
        client_before, switches_before = benchlib.own_cpu_times(), resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        started = time.perf_counter()
        result = pgconn.exec_(f"START_REPLICATION SLOT {SLOT} LOGICAL {start} (proto_version '1', "
                              f"publication_names '{PUB}')".encode())
        if result.status != pq.ExecStatus.COPY_BOTH:
            raise RuntimeError(f"START_REPLICATION: {pgconn.get_error_message()}")
        while messages < expected:
            size, data = pgconn.get_copy_data(0)
            if size < 0:
                raise RuntimeError(f"the replication stream ended ({size}) after {messages:,} messages: "
                                   f"{pgconn.get_error_message()}")
            kind = data[0]
            if kind == XLOG_DATA:
                messages += 1
                if batches is not None:
                    message = data[XLOG_HEADER:]
                    batches.add(message)
                    if message[0] in CHANGE_KINDS:
                        pending_changes += 1
                    elif message[0] == COMMIT and pending_changes >= batch_size:
                        batches.flush()
                        pending_changes = 0
            elif kind == KEEPALIVE:
                keepalives += 1
                if int.from_bytes(data[1:9], "big") >= end_lsn:
                    stopped_by = "keepalive past the end"
                    break
                if time.perf_counter() - started > READ_LIMIT_S:
                    raise RuntimeError(f"no end after {READ_LIMIT_S:.0f} s ({messages:,} messages)")
        if batches is not None:
            batches.flush()
        seconds = time.perf_counter() - started
        client = benchlib.cpu_delta(client_before, benchlib.own_cpu_times())
        client_switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - switches_before
        row = catalog_conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                                   (SLOT,)).fetchone()
        pid = row[0] if row else None
        # The walsender started with this connection: its CPU so far is this read's (and its start-up's).
        walsender = benchlib.process_cpu_times(pid) if pid else None
        walsender_switches = context_switches(pid) if pid else None
    finally:
        repl.close()
        catalog_conn.close()
    out: dict[str, Any] = {
        "messages": messages, "seconds": seconds, "stopped_by": stopped_by, "keepalives": keepalives,
        "client_cpu": client, "server_cpu": None if walsender is None else {"user": walsender[0], "sys": walsender[1]},
        "walsender_pid": pid, "client_switches": client_switches, "server_switches": walsender_switches,
    }
    if batches is not None:
        out.update(changes=batches.changes, batches=batches.batches, decode_seconds=batches.seconds)
    return out


# --- pg_recvlogical ------------------------------------------------------------------------------------------------


def recvlogical_binary(conn: psycopg.Connection, bin_dir: Path | None) -> Path | None:
    """``pg_recvlogical`` of the server's major version: in ``bin_dir`` when given (the embedded server's),
    else Debian's ``/usr/lib/postgresql/<major>/bin``, else ``pg_config --bindir`` when that is the same major."""
    row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None  # SHOW returns one row
    major = int(row[0]) // 10000
    candidates = [bin_dir] if bin_dir is not None else [Path(f"/usr/lib/postgresql/{major}/bin")]
    if bin_dir is None and shutil.which("pg_config"):
        try:
            version = subprocess.run(["pg_config", "--version"], capture_output=True, text=True).stdout
            if version.split()[1].split(".")[0] == str(major):
                candidates.append(Path(subprocess.run(["pg_config", "--bindir"], capture_output=True,
                                                      text=True).stdout.strip()))
        except (OSError, IndexError):
            pass
    return next((p / "pg_recvlogical" for p in candidates if (p / "pg_recvlogical").exists()), None)


def recvlogical_read(binary: Path, dsn: str, end: str) -> dict[str, Any]:
    """pg_recvlogical on the second slot to ``end``, output to /dev/null; wall time from its start to its exit."""
    argv = [str(binary), "-d", dsn, "-S", SLOT_RECV, "--start", "--endpos", end, "--no-loop", "-f", "/dev/null",
            "-F", "0", "-o", "proto_version=1", "-o", f"publication_names={PUB}"]
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    walsender: tuple[float, float] | None = None
    switches: int | None = None
    pid: int | None = None
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        with benchlib.admin_connect(dsn) as conn:
            while proc.poll() is None:
                if pid is None:
                    row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                                       (SLOT_RECV,)).fetchone()
                    pid = row[0] if row and row[0] else None
                if pid is not None:
                    sample, sample_switches = benchlib.process_cpu_times(pid), context_switches(pid)
                    walsender = sample or walsender
                    switches = sample_switches if sample_switches is not None else switches
                if time.perf_counter() - started > READ_LIMIT_S:
                    raise RuntimeError(f"pg_recvlogical did not finish in {READ_LIMIT_S:.0f} s")
                time.sleep(SAMPLE_S)
        seconds = time.perf_counter() - started  # its exit was seen within one sampling interval
        stderr = proc.stderr.read() if proc.stderr else ""
    except BaseException:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"pg_recvlogical failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    with benchlib.admin_connect(dsn) as conn:  # what it left unconfirmed on its slot (0: it read everything)
        counted = conn.execute(f"SELECT count(*) FROM ({benchlib.RAW_SQL}) AS peek", (SLOT_RECV, PUB)).fetchone()
        assert counted is not None  # an aggregate without GROUP BY returns one row
    return {"seconds": seconds, "binary": str(binary), "argv": argv, "left_on_slot": int(counted[0]),
            "client_cpu": {"user": children_after.ru_utime - children_before.ru_utime,
                           "sys": children_after.ru_stime - children_before.ru_stime},
            "client_switches": children_after.ru_nvcsw - children_before.ru_nvcsw, "server_switches": switches,
            "server_cpu": None if walsender is None else {"user": walsender[0], "sys": walsender[1]}}


# --- one server ----------------------------------------------------------------------------------------------------


def run_server(admin_dsn: str, scale: Scale, label: str, bin_dir: Path | None = None) -> dict[str, Any]:
    """Everything on one server; its database (and slots) are dropped at the end, also on failure."""
    info = benchlib.machine_info(admin_dsn)
    result: dict[str, Any] = {"label": label, "pg_version": info["pg_version"], "pg_settings": info["pg_settings"],
                              "loadavg": info["loadavg"]}
    log(f"stream: {label}: PostgreSQL {info['pg_version']} at {benchlib.server_host(admin_dsn)}, load average "
        f"{info['loadavg'][0]:.2f}")
    try:
        w = prepare(admin_dsn, scale)
        result["workload"] = {k: v for k, v in w.items() if k != "dsn"}
        dsn = w["dsn"]
        peeks = []
        for attempt in (1, 2):
            peeks.append(benchlib.raw_fetch(dsn, SLOT, PUB))
            log(f"stream: {label}: peek raw fetch #{attempt}: {peeks[-1]['messages']:,} messages in "
                f"{peeks[-1]['seconds']:.2f}s")
        if peeks[0]["messages"] != peeks[1]["messages"]:
            raise RuntimeError(f"the two peeks returned {peeks[0]['messages']:,} and {peeks[1]['messages']:,}")
        result["peek"] = peeks
        expected = peeks[0]["messages"]
        for name, decode in (("stream", False), ("stream_decode", True)):
            flushed = confirmed_flush(dsn, SLOT)
            if flushed != w["start"]:
                raise RuntimeError(f"slot {SLOT} was consumed: confirmed_flush_lsn {flushed}, created at {w['start']}")
            r = stream_read(dsn, w["start"], w["end"], expected, decode=decode, batch_size=scale.batch_size)
            r["confirmed_flush_before"] = flushed
            result[name] = r
            log(f"stream: {label}: {name}: {r['messages']:,} messages in {r['seconds']:.2f}s "
                f"({r['messages'] / r['seconds']:,.0f}/s, stopped by {r['stopped_by']})"
                + (f", {r['changes']:,} changes decoded in {r['batches']} batches, decode {r['decode_seconds']:.2f}s"
                   if decode else ""))
            if r["messages"] != expected:
                raise RuntimeError(f"{name}: {r['messages']:,} messages, the peek had {expected:,}")
        with benchlib.admin_connect(dsn) as conn:
            binary = recvlogical_binary(conn, bin_dir)
        if binary is None:
            log(f"stream: {label}: no pg_recvlogical of the server's version found: skipped")
            result["recvlogical"] = None
        else:
            r = recvlogical_read(binary, dsn, w["end"])
            result["recvlogical"] = r
            log(f"stream: {label}: pg_recvlogical: {r['seconds']:.2f}s, {r['left_on_slot']} messages left on its "
                "slot")
    finally:
        try:
            dropped = benchlib.drop_bench_databases(admin_dsn, (DB,))
            log(f"stream: {label}: cleanup: dropped {', '.join(dropped) or 'nothing'}")
        except Exception as exc:
            log(f"stream: {label}: cleanup FAILED, drop by hand: slots in and database {DB}: {exc}")
    return result


def run_pg18(scale: Scale) -> dict[str, Any]:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from embedded_pg import EmbeddedPostgres

    work = tempfile.mkdtemp(prefix="cdc-bench-stream-pg18-")
    server = EmbeddedPostgres(Path(work) / "pg")
    try:
        log(f"stream: starting an embedded PostgreSQL 18 in {work}")
        server.start()
        return run_server(server.url(), scale, "embedded PostgreSQL 18", bin_dir=server.bin_dir)
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)


# --- report --------------------------------------------------------------------------------------------------------


def cpu_text(cpu: dict[str, float] | None, prefix: str = "") -> str:
    if cpu is None:
        return "-"
    return f"{prefix}{cpu['user']:.2f} + {cpu['sys']:.2f}"


def cpu_total(cpu: dict[str, float] | None) -> float | None:
    return None if cpu is None else cpu["user"] + cpu["sys"]


def server_rows(r: dict[str, Any], scale: Scale) -> tuple[list[list[str]], dict[str, Any]]:
    from run import fmt_int, fmt_s

    best = min(r["peek"], key=lambda p: p["seconds"])
    other = max(r["peek"], key=lambda p: p["seconds"])
    peek_rate = best["messages"] / best["seconds"]
    rows = [["peek raw fetch: `pg_logical_slot_peek_binary_changes` through a named cursor, no decoding "
             f"(reference; best of 2, other {fmt_s(other['seconds'])} s)", fmt_int(best["messages"]),
             fmt_s(best["seconds"]), fmt_int(peek_rate), "1.00×", cpu_text(best["client_cpu"]),
             cpu_text(best["server_cpu"], "backend: ")]]
    figures: dict[str, Any] = {"peek": best, "peek_rate": peek_rate}
    d = r["stream_decode"]
    for key, label in (("stream", "streaming protocol (`START_REPLICATION`), no decoding"),
                       ("stream_decode", f"streaming protocol + columnar decode ({d['batches']} batches of "
                                         f"{fmt_int(scale.batch_size)} changes, {fmt_int(d['changes'])} changes; "
                                         f"{fmt_s(d['decode_seconds'])} s of it decoding)")):
        x = r[key]
        rate = x["messages"] / x["seconds"]
        figures[f"{key}_rate"] = rate
        rows.append([label, fmt_int(x["messages"]), fmt_s(x["seconds"]), fmt_int(rate),
                     f"{rate / peek_rate:.2f}×", cpu_text(x["client_cpu"]), cpu_text(x["server_cpu"], "walsender: ")])
    rv = r.get("recvlogical")
    if rv is not None:
        messages = best["messages"]
        rate = messages / rv["seconds"]
        figures["recvlogical_rate"] = rate
        note = ("the peek's count (none left on its slot after)" if rv["left_on_slot"] == 0
                else f"**{fmt_int(rv['left_on_slot'])} left unread on its slot**")
        rows.append([f"`pg_recvlogical` (PostgreSQL's C client) to `/dev/null`, `--endpos` at the workload's end, "
                     f"its own slot; messages: {note}", fmt_int(messages), fmt_s(rv["seconds"]), fmt_int(rate),
                     f"{rate / peek_rate:.2f}×", cpu_text(rv["client_cpu"], "child: "),
                     cpu_text(rv["server_cpu"], "walsender (last sample): ")])
    return rows, figures


def conclusion(r: dict[str, Any], figures: dict[str, Any]) -> str:
    """Sentences computed from this server's figures (nothing in them is fixed in advance)."""
    from run import fmt_int, fmt_s

    s, d, rv = r["stream"], r["stream_decode"], r.get("recvlogical")
    peek, peek_rate, rate = figures["peek"], figures["peek_rate"], figures["stream_rate"]
    ratio = rate / peek_rate
    if ratio < 1:
        verdict = (f"the streaming protocol is **slower** than the peek: {fmt_int(rate)} vs {fmt_int(peek_rate)} "
                   f"msgs/s, {ratio:.2f}× the peek's rate (the peek is {1 / ratio:.1f}× faster)")
    else:
        verdict = (f"the streaming protocol is **faster** than the peek: {fmt_int(rate)} vs {fmt_int(peek_rate)} "
                   f"msgs/s, {ratio:.2f}× the peek's rate")
    parts = [f"On PostgreSQL {r['pg_version']}, {verdict}."]
    wal, cli = cpu_total(s["server_cpu"]), cpu_total(s["client_cpu"])
    if wal is not None and cli is not None:
        per = 1e6 * wal / s["messages"]
        parts.append(
            f"Without decoding, the walsender used {fmt_s(wal)} s of CPU in the {fmt_s(s['seconds'])} s of the read "
            f"({100 * wal / s['seconds']:.0f} % of one core; {fmt_s(s['server_cpu']['sys'])} s of it in the kernel, "
            f"{fmt_s(s['server_cpu']['user'])} s in user mode; {per:.1f} µs per message), this client "
            f"{fmt_s(cli)} s ({100 * cli / s['seconds']:.0f} %)"
            + ("" if peek["server_cpu"] is None else
               f"; the peek's backend used {fmt_s(cpu_total(peek['server_cpu']) or 0.0)} s for the same messages "
               f"({fmt_s(peek['server_cpu']['sys'])} s in the kernel)") + ".")
        if s.get("server_switches") is not None:
            parts.append(
                f"The walsender waited {fmt_int(s['server_switches'])} times (voluntary context switches), this "
                f"client {fmt_int(s['client_switches'])} times ({1000 * s['client_switches'] / s['messages']:.1f} "
                "per 1,000 messages).")
            if wal > cli and s["client_switches"] > s["server_switches"]:
                parts.append("The walsender used more CPU than this client and this client did the waiting: the "
                             "server's side is what the streaming read waits for.")
    if rv is not None:
        diff = rv["seconds"] / s["seconds"]
        how = ("about as long as" if 0.85 <= diff <= 1.15 else "longer than" if diff > 1 else "less time than")
        rv_wal = cpu_total(rv["server_cpu"])
        parts.append(
            f"`pg_recvlogical`, a C client, took {fmt_s(rv['seconds'])} s, {how} this Python client's "
            f"{fmt_s(s['seconds'])} s ({diff:.2f}×), using {fmt_s(cpu_total(rv['client_cpu']) or 0.0)} s of CPU itself"
            + ("" if rv_wal is None else f" while its walsender used at least {fmt_s(rv_wal)} s") + ".")
    d_rate = figures["stream_decode_rate"]
    parts.append(
        f"With our columnar decode in the same loop the streaming read delivered {fmt_int(d_rate)} msgs/s "
        f"({d_rate / peek_rate:.2f}× the peek), {fmt_s(d['decode_seconds'])} s of its {fmt_s(d['seconds'])} s "
        "decoding.")
    d_wal = cpu_total(d["server_cpu"])
    if d_rate > 1.1 * rate and d_wal is not None and wal is not None:  # a clear difference, not the noise
        waits = ("" if d.get("server_switches") is None or s.get("server_switches") is None else
                 f" and waited {fmt_int(d['server_switches'])} times against {fmt_int(s['server_switches'])}")
        parts.append(
            f"That read was {d_rate / rate:.2f}× as fast as the one without decoding, and its walsender used "
            f"{fmt_s(d_wal)} s of CPU ({fmt_s(d['server_cpu']['sys'])} s in the kernel) against {fmt_s(wal)} s "
            f"({fmt_s(s['server_cpu']['sys'])} s){waits}. One reading, not measured here: while the client decodes "
            "a batch the socket's buffer fills, and the walsender's sends then carry many messages each instead of "
            "one.")
    return " ".join(parts)


def render(results: list[dict[str, Any]], info: dict[str, Any], scale: Scale, command: str,
           started: dt.datetime, elapsed: float) -> str:
    from run import fmt_int, md_table

    load = info["loadavg"]
    busy = " (**busy**: other work ran at the same time, the figures are noisy)" if load[0] > 0.5 else ""
    lines = [
        "## 15. Streaming replication protocol vs peek (`bench/stream_protocol.py`)", "",
        f"- command: `{command}`; date {started:%Y-%m-%d %H:%M} UTC, whole run {elapsed / 60:.1f} min",
        f"- machine: {info['nproc']} cores ({info.get('cpu', '?')}), {info.get('ram_gib', '?')} GiB RAM, load average "
        f"at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}{busy}; the servers on the same machine; code "
        f"measured: {info['code']}",
        f"- Python {info['python']}, psycopg {info['psycopg']} (libpq {pq.version()}, {pq.__impl__} implementation), "
        f"pyarrow {info['pyarrow']}",
        f"- workload (each server): benchmark 1's, in a database of its own: table `{TABLE}` seeded with "
        f"{fmt_int(scale.changes // 2)} rows, two slots created, then {fmt_int(scale.changes)} changes in "
        f"transactions of {fmt_int(scale.tx_rows)} (updates and inserts alternately), `VACUUM ANALYZE`, `CHECKPOINT`",
        "- peek: `benchlib.raw_fetch`, benchmark 1's reference (`proto_version 1`, rows counted, not decoded), run "
        "twice, the faster counts. Streaming: psycopg 3 connection with `replication=\"database\"`, "
        "`START_REPLICATION SLOT … LOGICAL <slot's creation LSN> (proto_version '1', publication_names …)`, each "
        "CopyData read with `pgconn.get_copy_data(0)`, no standby-status feedback ever sent (the slot is not consumed; "
        "its `confirmed_flush_lsn` is checked before each read), stopped when the peek's message count is reached; the "
        "clock starts before `START_REPLICATION` (connecting is not timed, as for the peek). `pg_recvlogical` runs on "
        "a second slot created at the same point (it confirms what it reads), clock from its start to its exit",
        "- CPU seconds are user + system: this process from `getrusage` (pg_recvlogical: `RUSAGE_CHILDREN`); the "
        "server's from `/proc/<pid>/stat` of the peek's backend (before and after) or of the slot's "
        "`active_pid` walsender (read just before the connection closes; for pg_recvlogical sampled every "
        f"{SAMPLE_S * 1000:.0f} ms, the last sample before it exited, so a lower bound)",
        "",
    ]
    header = ["measure", "messages", "seconds", "msgs/s", "vs peek fetch", "client CPU s (user + sys)",
              "server CPU s (user + sys)"]
    for r in results:
        rows, figures = server_rows(r, scale)
        w = r["workload"]
        settings = ", ".join(f"{k} {v}" for k, v in r["pg_settings"].items())
        lines += [f"### {r['label']}: PostgreSQL {r['pg_version']}", "",
                  f"Settings: {settings}. Workload: {fmt_int(w['counts']['u'])} updates, {fmt_int(w['counts']['c'])} "
                  f"inserts in {w['transactions']} transactions, {w['wal_bytes'] / 2**20:.0f} MiB of WAL, written in "
                  f"{w['seconds']:.1f} s; load average before {r['loadavg'][0]:.2f}.", "",
                  md_table(header, rows), "", conclusion(r, figures), ""]
    lines += [
        "Where the walsender's time goes, from PostgreSQL's source (`src/backend/replication/walsender.c`): for "
        "logical decoding, `WalSndWriteData` puts each output message into a CopyData packet and calls "
        "`pq_flush_if_writable()` right after it, a send attempt on the socket for every message; each pass of "
        "`WalSndLoop` (one WAL record decoded by `XLogSendLogical`) also checks the socket for client replies "
        "(`ProcessRepliesIfAny`) and flushes again. The peek collects the same messages in a tuplestore and the "
        "cursor ships them 5,000 rows per round trip. The CPU figures above are measured; this paragraph is a "
        "reading of the code, not a measurement.",
        "",
    ]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 10x smaller workload: a smoke run")
    parser.add_argument("--dsn", default=benchlib.DEFAULT_DSN,
                        help=f"an administrative connection to the server (default {benchlib.DEFAULT_DSN}); the "
                             f"benchmark creates and drops its own database ({DB}) there")
    parser.add_argument("--pg18", action="store_true",
                        help="also run on an embedded PostgreSQL 18 (scripts/embedded_pg.py, temporary data dir)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures to FILE")
    parser.add_argument("--write", metavar="FILE", help="also write the Markdown section to FILE")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    started_at, started, info = benchlib.begin_run(
        args.dsn, _terminate, lambda info: f"stream: {info['nproc']} cores, scale {scale.name}, load average "
        f"{info['loadavg'][0]:.2f}, code: {info['code']}")
    results = []
    try:
        results.append(run_server(args.dsn, scale, "the machine's server"))
        if args.pg18:
            results.append(run_pg18(scale))
    finally:
        shutil.rmtree(os.environ["CDC_BENCH_AIRFLOW_HOME"], ignore_errors=True)
    elapsed = time.perf_counter() - started
    command = ".venv/bin/python bench/stream_protocol.py" + ("" if len(sys.argv) < 2 else " " + " ".join(sys.argv[1:]))
    section = render(results, info, scale, command, started_at, elapsed)
    print(section)
    if args.write:
        Path(args.write).write_text(section)
    if args.json:
        Path(args.json).write_text(json.dumps({"scale": scale.name, "machine": info, "results": results}, indent=1,
                                              default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
