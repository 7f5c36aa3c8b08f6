"""Reading the change stream of a PostgreSQL source: peek pgoutput messages from the slot and decode them.

Why ``peek`` then ``advance``: ``pg_logical_slot_peek_binary_changes`` reads without consuming, so capture can be
repeated any number of times (a cleared task replays the identical range) and the slot only moves when the commit
step calls ``pg_replication_slot_advance`` after the sink committed. ``peek`` re-decodes from the slot's
``restart_lsn`` and is bounded here by ``upto_nchanges`` (checked at transaction commits, so a transaction stays
whole); a transaction larger than a batch is read in windows, so memory stays bounded by the batch size.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
import pyarrow as pa

from airflow_provider_cdc.connectors.postgres import pgoutput
from airflow_provider_cdc.connectors.postgres.catalog import Catalog
from airflow_provider_cdc.connectors.postgres.checks import publication_option
from airflow_provider_cdc.connectors.postgres.columnar import Unsupported, decode_columnar
from airflow_provider_cdc.connectors.postgres.decoder import StreamDecoder
from airflow_provider_cdc.errors import PositionLostError

log = logging.getLogger("airflow_provider_cdc.source.postgres")


@dataclasses.dataclass
class _ReadAhead:
    """The messages of one peek that read several batches ahead; later captures are cut from it."""

    messages: pa.LargeBinaryArray
    kinds: np.ndarray  # each message's first byte
    commits: np.ndarray  # the indexes of Commit messages
    ends: np.ndarray  # their end LSNs, ascending (commit order)
    from_lsn: int  # the position the peek was made for: captures from there on can be cut from it
    drained: bool  # the peek reached the slot's end
    # Messages of it before the slot's confirmed position now (the peek started there: 0), for _rows_through;
    # None once unknown.
    shift: int | None = 0


class StreamCapture:
    """The stream half of :class:`~airflow_provider_cdc.connectors.postgres.source.PgSource`."""

    source_id: str
    slot_name: str
    publication_name: str
    # Columnar decoding is the fast path; the per-message decoder is its reference (and the fallback).
    columnar: bool = True
    # Where captures of this object ended (LSN) and how many rows a peek returns up to there, from the slot's
    # confirmed position. A capture from such an LSN before the slot is acknowledged there (captured ahead while the
    # previous batch loads, in a fused loop) gets those rows again, already loaded, ahead of its own: its peek asks
    # for them on top of its batch, so that the batch is as large as usual and the peek is not repeated.
    _rows_through: dict[str, int]
    # Read-ahead (a fused loop, :meth:`read_ahead`): one peek reads up to this many messages, and the captures after
    # it are cut from what it read while they can be (0: off).
    read_ahead_rows: int = 0
    _read_ahead: _ReadAhead | None = None

    if TYPE_CHECKING:
        @property
        def conn(self) -> psycopg.Connection: ...  # PgSource's connection

        @property
        def qualified_tables(self) -> list[str]: ...  # PgSource's configured tables

    def _decoder(self, position: dict[str, Any], keep: set[str] | None) -> StreamDecoder:
        return StreamDecoder(self.source_id, Catalog(self.conn), position, keep, database=self.conn.info.dbname)

    def _streamed_tables(self, position: dict[str, Any]) -> set[str]:
        """Tables whose stream changes are applied: configured, and not waiting for a snapshot that has not started
        (that snapshot will read the rows with these changes in them)."""
        snapshot = position.get("snapshot")
        waiting: list[str] = []
        if snapshot:
            # A table read in key ranges streams from its plan on (each chunk is placed at its watermark).
            started = snapshot.get("after") is not None or snapshot.get("ranges") is not None
            waiting = snapshot["pending"][1:] if started else snapshot["pending"]
        return {t for t in self.qualified_tables if t not in waiting}

    def _capture_stream(self, position: dict[str, Any], max_changes: int, keep: set[str],
                        upto: str | None = None) -> StreamDecoder:
        """The next ``max_changes`` changes after ``position``, of transactions that commit before ``upto`` (an LSN;
        None: no limit)."""
        if position.get("partial"):
            return self._capture_window(position, max_changes, keep)
        ahead = self._rows_through.get(position["lsn"], 0)
        # Not while a snapshot is pending: its page is read after the stream part and must see what that part
        # read, as of now (see SnapshotCapture), not as of an earlier peek.
        if upto is None and self.read_ahead_rows > max_changes and not position.get("snapshot"):
            cut = self._cut_read_ahead(position, max_changes, keep, fresh=False)
            if cut is None:
                self._peek_ahead(position, ahead + max_changes)
                cut = self._cut_read_ahead(position, max_changes, keep, fresh=True)
            if cut is not None:
                return cut
        limit = max_changes + ahead
        cap: int | None = 4 * max_changes + 1000 + ahead  # messages: B, C and R count too
        while True:
            messages = self._peek_messages(limit, cap, upto)
            drained = len(messages) < limit
            if cap is not None and len(messages) >= cap:
                whole = self._whole_transactions(messages, position)
                if whole is None:
                    # The first new transaction alone is larger than a batch: read it in windows.
                    first = self._first_new_transaction(messages, position)
                    if first is not None:
                        return self._capture_window({**position, "partial": {"final_lsn": first, "done": 0}},
                                                    max_changes, keep)
                    cap = None  # cut inside transactions loaded already: read on without the cap
                    continue
                messages = whole
            decoder = self._decode(position, messages, keep)
            decoder.drained = drained
            decoder.xids = self._begin_xids(messages)
            decoder.rows_through = decoder.messages
            # Only transactions at or before the stored position came back (the Variable was stored but the slot
            # not yet advanced): they used up the limit, so look further rather than report nothing.
            if decoder.transactions or not decoder.skipped or decoder.messages < limit:
                return decoder
            limit = limit * 4 + decoder.messages
            cap = None if cap is None else 4 * limit + 1000

    def _note_rows_through(self, lsn: str, rows: int) -> None:
        self._rows_through[lsn] = rows

    def _slot_moved_to(self, lsn: str) -> None:
        """The slot was acknowledged at ``lsn``: counts of rows now start there (unknown ones are forgotten)."""
        base = self._rows_through.get(lsn)
        self._rows_through = {} if base is None else {
            at: rows - base for at, rows in self._rows_through.items() if rows > base}
        ahead = self._read_ahead
        if ahead is not None and ahead.shift is not None:
            at = pgoutput.lsn_to_int(lsn)
            k = int(np.searchsorted(ahead.ends, at, side="right"))
            ahead.shift = int(ahead.commits[k - 1]) + 1 if k and int(ahead.ends[k - 1]) == at else None

    def read_ahead(self, rows: int) -> None:
        """In a loop of captures, let a peek read up to ``rows`` messages past its batch and cut the next batches
        from what it read.

        ``peek`` decodes from the slot's ``restart_lsn`` every time, and in a backlog written faster than the
        server logs its running transactions (every 15 s) that point stays where the backlog began: each peek
        decodes everything before its batch again. Reading several batches in one peek divides that work by as
        many; memory grows by the messages held (``rows``). 0 turns it off."""
        self.read_ahead_rows = max(int(rows), 0)
        if not self.read_ahead_rows:
            self._read_ahead = None

    def _peek_ahead(self, position: dict[str, Any], ahead: int) -> None:
        """Peek from the slot's confirmed position: ``ahead`` messages (those up to ``position`` and this batch's),
        then up to ``read_ahead_rows`` more."""
        limit = ahead + self.read_ahead_rows
        messages = self._peek_messages(limit, 4 * limit + 1000)
        kinds, starts = self._kinds_and_lsns(messages)
        commits = np.flatnonzero(kinds == ord("C"))
        data = np.frombuffer(messages.buffers()[2], np.uint8)
        # Commit: kind, flags, commit LSN, then the end LSN (bytes 10 to 17).
        ends = data[starts[commits][:, None] + np.arange(10, 18)].view(">u8").reshape(len(commits)).astype(np.int64)
        self._read_ahead = _ReadAhead(messages, kinds, commits, ends, pgoutput.lsn_to_int(position["lsn"]),
                                      drained=len(messages) < limit)

    def _cut_read_ahead(self, position: dict[str, Any], max_changes: int, keep: set[str],
                        fresh: bool) -> StreamDecoder | None:
        """The batch after ``position`` cut from the read-ahead, ending at a commit as a peek's would: None when it
        does not hold a whole batch there (unless it was just read and reached the slot's end: ``fresh``), or when
        that batch's first transaction is larger than a batch (the usual path reads it in windows)."""
        ahead = self._read_ahead
        start = pgoutput.lsn_to_int(position["lsn"])
        if ahead is None or start < ahead.from_lsn:
            return None
        k = int(np.searchsorted(ahead.ends, start, side="right"))
        first = int(ahead.commits[k - 1]) + 1 if k else 0
        j = int(np.searchsorted(ahead.commits, first + max_changes - 1, side="left"))
        if j < len(ahead.commits):
            last, drained = int(ahead.commits[j]) + 1, False
        elif fresh and ahead.drained:
            last, drained = len(ahead.messages), True
        else:
            return None
        cap = 4 * max_changes + 1000  # as the usual peek's: memory stays bounded by the batch size
        if last - first > cap:
            # Whole transactions up to the cap, as the usual path keeps them; none fits (the first alone is larger
            # than the cap): the usual path reads it in windows.
            within = int(np.searchsorted(ahead.commits, first + cap - 1, side="right")) - 1
            if within < k:
                return None
            last, drained = int(ahead.commits[within]) + 1, False
        # A peek from here would announce each relation (and type) again before its first change; the decoder gets
        # the last announcement before the cut instead, right after the first Begin, where a peek would send it.
        kinds = ahead.kinds
        indexes = np.arange(first, last)
        announced = np.flatnonzero((kinds[:first] == ord("R")) | (kinds[:first] == ord("Y")))
        begins = np.flatnonzero(kinds[first:last] == ord("B"))
        if len(announced) and len(begins):
            _, starts = self._kinds_and_lsns(ahead.messages)
            data = np.frombuffer(ahead.messages.buffers()[2], np.uint8)
            ids = data[starts[announced][:, None] + np.arange(0, 5)].astype(np.int64) @ (256 ** np.arange(4, -1, -1))
            _, last_of_each = np.unique(ids[::-1], return_index=True)
            latest = np.sort(announced[::-1][last_of_each])
            cut_at = int(begins[0]) + 1
            indexes = np.concatenate([indexes[:cut_at], latest, indexes[cut_at:]])
        messages = ahead.messages.take(pa.array(indexes, pa.int64()))
        decoder = self._decode(position, messages, keep)
        decoder.drained = drained
        decoder.xids = self._begin_xids(messages)
        decoder.rows_through = None if ahead.shift is None else last - ahead.shift
        return decoder

    @staticmethod
    def _kinds_and_lsns(messages: pa.LargeBinaryArray) -> tuple[np.ndarray, np.ndarray]:
        _, offsets_buf, data = messages.buffers()
        buf = np.frombuffer(data, np.uint8)
        starts = np.frombuffer(offsets_buf, np.int64, count=len(messages) + 1, offset=messages.offset * 8)[:-1]
        return buf[starts], starts

    @classmethod
    def _begin_xids(cls, messages: pa.LargeBinaryArray) -> list[int]:
        """The xid of every Begin message (``B``, final LSN, commit time, then the xid: bytes 17 to 20)."""
        kinds, starts = cls._kinds_and_lsns(messages)
        begins = starts[kinds == ord("B")]
        if not len(begins):
            return []
        buf = np.frombuffer(messages.buffers()[2], np.uint8)
        xids = buf[begins[:, None] + np.arange(17, 21)].view(">u4").reshape(len(begins))
        return sorted(set(xids.tolist()))

    def _whole_transactions(self, messages: pa.LargeBinaryArray,
                            position: dict[str, Any]) -> pa.LargeBinaryArray | None:
        """The messages up to the last commit, when they hold a transaction not loaded yet; else None."""
        kinds, _ = self._kinds_and_lsns(messages)
        commits = np.flatnonzero(kinds == ord("C"))
        start = pgoutput.lsn_to_int(position["lsn"])
        for i in commits[::-1].tolist():
            if pgoutput.decode_commit(messages[i].as_py()).end_lsn > start:
                return messages.slice(0, i + 1)
        return None

    def _first_new_transaction(self, messages: pa.LargeBinaryArray, position: dict[str, Any]) -> str | None:
        kinds, _ = self._kinds_and_lsns(messages)
        start = pgoutput.lsn_to_int(position["lsn"])
        for i in np.flatnonzero(kinds == ord("B")).tolist():
            begin = pgoutput.decode_begin(messages[i].as_py())
            if begin.final_lsn >= start:
                return pgoutput.int_to_lsn(begin.final_lsn)
        return None

    def _capture_window(self, position: dict[str, Any], max_changes: int, keep: set[str]) -> StreamDecoder:
        """The next ``max_changes`` messages of one transaction too large for a batch (memory stays bounded by
        the batch size, whatever the transaction's size). The position then points inside the transaction
        (``partial``: its final LSN and how many of its messages are loaded); the slot stays before it until its
        last window is loaded. The server filters: of the messages already loaded only Begin, Relation and Type
        come back, which the decoder needs to read the rest, and so do the Relation and Type messages before the
        transaction (a relation announced in an earlier transaction of the same peek, when the slot is behind the
        position, is not announced again inside this one)."""
        partial = position["partial"]
        done = int(partial["done"])
        final_lsn = pgoutput.lsn_to_int(partial["final_lsn"])
        begin_prefix = bytes([0x42]) + final_lsn.to_bytes(8, "big")
        query = (
            "WITH p AS MATERIALIZED (SELECT data, n FROM pg_logical_slot_peek_binary_changes("
            "%(slot)s, %(upto)s::pg_lsn, NULL, 'proto_version', '1', 'publication_names', %(pub)s, "
            "'messages', 'true') WITH ORDINALITY AS p(lsn, xid, data, n)),"
            " b AS (SELECT min(n) AS n0 FROM p WHERE substr(data, 1, 9) = %(begin)s)"
            " SELECT p.n - b.n0, p.data FROM p, b WHERE (p.n < b.n0 AND get_byte(p.data, 0) IN (82, 89)) OR"
            " (p.n >= b.n0 AND ("
            "  (p.n < b.n0 + %(done)s AND get_byte(p.data, 0) IN (66, 82, 89))"
            "  OR (p.n >= b.n0 + %(done)s AND p.n < b.n0 + %(done)s + %(window)s))) ORDER BY p.n"
        )
        # Decoding stops after the transaction's commit (a Begin message's final LSN is where its commit record
        # is; upto_lsn keeps transactions that commit before it).
        params = {"slot": self.slot_name, "pub": publication_option(self.publication_name), "begin": begin_prefix,
                  "done": done,
                  "upto": pgoutput.int_to_lsn(final_lsn + 1),
                  "window": max(max_changes, 1)}
        with self.conn.transaction():
            with self.conn.cursor(name=f"cdc_window_{self.slot_name}", binary=True) as cur:
                cur.itersize = 10000
                cur.execute(query, params)
                rows = [(int(offset), bytes(data)) for offset, data in cur]
        if not rows:
            raise PositionLostError(self.source_id, position, f"transaction {partial['final_lsn']} that the position "
                                    "points into is no longer in the slot")
        decoder = self._decoder(position, keep)
        begin = next((data for _, data in rows if data[:1] == b"B"), None)
        decoder.xids = [pgoutput.decode_begin(begin).xid] if begin is not None else []
        last = done
        for offset, data in rows:
            decoder.feed(data)
            last = offset
            if data[0] == 0x43:  # its commit: the transaction is complete
                break
        if decoder.begin is not None:  # no commit yet: more windows to come
            decoder.flush_partial({"final_lsn": partial["final_lsn"], "done": last + 1}, done)
        log.info("source %s: read messages %d to %d of the large transaction %s%s", self.source_id, done, last,
                 partial["final_lsn"], "" if decoder.begin is not None else " (its last part)")
        return decoder

    def _decode(self, position: dict[str, Any], messages: pa.LargeBinaryArray, keep: set[str]) -> StreamDecoder:
        """Decode peeked messages columnar, or message by message for rare shapes."""
        decoder = self._decoder(position, keep)
        if self.columnar:
            try:
                decoder.adopt(decode_columnar(decoder, messages))
                return decoder
            except Unsupported as exc:
                log.info("decoding this batch message by message: %s", exc)
                decoder = self._decoder(position, keep)
        for data in messages.to_pylist():
            decoder.feed(data)
        return decoder

    def _peek_messages(self, limit: int, cap: int | None = None, upto: str | None = None) -> pa.LargeBinaryArray:
        """The peeked messages as one Arrow array, at most ``cap`` of them. The server concatenates them into one
        value and sends their lengths beside it: one row instead of one per message, which is what a cursor spends
        its time on. A batch too large for one value (1 GiB) is read through a server-side cursor instead."""
        source = ("pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s, 'proto_version', '1', 'publication_names', "
                  "%s, 'messages', 'true')")
        params = (self.slot_name, upto, limit, publication_option(self.publication_name))
        if cap is not None:
            source += f" WITH ORDINALITY AS p(lsn, xid, data, n) WHERE n <= {int(cap)}"
        try:
            with self.conn.cursor(binary=True) as cur:
                # One plain Aggregate over the function scan: both aggregates see the rows in stream order
                # (an ORDER BY would sort, and spill, the whole batch); the decoder checks commit order anyway.
                cur.execute(
                    "SELECT coalesce(array_agg(length(data)), '{}'), coalesce(string_agg(data, ''::bytea), ''::bytea) "
                    f"FROM {source}",
                    params,
                )
                row = cur.fetchone()
                assert row is not None  # aggregates without GROUP BY return one row
                lengths, data = row
            offsets = np.zeros(len(lengths) + 1, np.int64)
            np.cumsum(lengths, out=offsets[1:])
            return pa.Array.from_buffers(
                pa.large_binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
            )
        except psycopg.errors.ProgramLimitExceeded:
            log.info("batch larger than one value can hold; reading it row by row")
        with self.conn.transaction():
            with self.conn.cursor(name=f"cdc_peek_{self.slot_name}", binary=True) as cur:
                cur.itersize = 10000
                cur.execute(f"SELECT data FROM {source}", params)
                return pa.array([data for (data,) in cur], pa.large_binary())
