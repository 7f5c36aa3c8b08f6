"""Rows into a PostgreSQL sink: fold each table's changes per key, ``COPY`` them into a stage, ``MERGE`` once.

The batch is folded per key with Arrow, written as CSV by Arrow and ``COPY``-ed into a temporary stage, then one
``MERGE`` per table moves it into the target, guarded by ``_cdc_position`` so that an older change never overwrites
a newer one. Values arrive in the portable form of the value contract, which PostgreSQL's input functions read as
they are (``true``, ``2024-05-01T12:00:00.25Z``), except binary, which gets its ``\\x`` back
(:func:`~.values.pg_input_table`). CSV needs no escaping of backslashes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql
from psycopg.pq import TransactionStatus

from airflow_provider_cdc.connectors.postgres.values import pg_input_table
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import BEFORE_PREFIX, OP_DELETE, OP_TRUNCATE, ChangeBatch
from airflow_provider_cdc.fold import MOVED_COLUMN, fold_changes, plan_table
from airflow_provider_cdc.tables import TableSchema

COPY_CHUNK_ROWS = 65_536  # rows per CSV chunk written to COPY: bounds the extra memory of the text form
_CSV_OPTIONS = pacsv.WriteOptions(include_header=False)


class RowMerge:
    """The row half of :class:`~airflow_provider_cdc.connectors.postgres.sink.PgSink`."""

    sink_id: str
    target_schema: str
    delete_mode: str

    if TYPE_CHECKING:  # from TableDdl
        def _existing_columns(self, cur: psycopg.Cursor, table: str) -> dict[str, str] | None: ...

        def _table_label(self, schema: TableSchema) -> str: ...

        def _key_columns(self, cur: psycopg.Cursor, table: str) -> list[str]: ...

    def _apply_table(
        self, cur: psycopg.Cursor, schema: TableSchema, changes: pa.Table, high_water: int, batch: ChangeBatch
    ) -> dict[str, int]:
        """Apply one table's events: segments between truncates are folded and merged, in ``seq`` order."""
        plan = plan_table(changes, high_water)
        stats = plan.stats
        if plan.changes.num_rows == 0:
            return stats
        sink_columns = self._existing_columns(cur, schema.name) or {}
        columns, gone = plan.columns_for(sink_columns)
        for kind, part in plan.parts():
            if kind == "merge":
                self._merge_segment(cur, schema, columns, gone, sink_columns, part, stats, batch)
            else:
                self._truncate(cur, schema, part[0], part[1], stats)
        return stats

    def _truncate(self, cur: psycopg.Cursor, schema: TableSchema, seq: int, ts_ms: int | None,
                  stats: dict[str, int]) -> None:
        """Remove (or, soft, mark) the rows older than the truncate; newer rows were written after it."""
        target = sql.Identifier(self.target_schema, schema.name)
        if self.delete_mode == "hard":
            cur.execute(sql.SQL("DELETE FROM {} WHERE _cdc_position IS NULL OR _cdc_position < %(seq)s").format(
                target), {"seq": seq})
        else:
            cur.execute(sql.SQL(
                "UPDATE {} SET _cdc_deleted_at = to_timestamp(%(ts)s::bigint / 1000.0), _cdc_op = %(op)s,"
                " _cdc_position = %(seq)s, _cdc_ts = to_timestamp(%(ts)s::bigint / 1000.0)"
                " WHERE _cdc_deleted_at IS NULL AND (_cdc_position IS NULL OR _cdc_position < %(seq)s)"
            ).format(target), {"seq": seq, "ts": ts_ms, "op": OP_TRUNCATE})
        stats["truncates"] += 1
        stats["truncated_rows"] += max(cur.rowcount, 0)

    def _merge_segment(
        self,
        cur: psycopg.Cursor,
        schema: TableSchema,
        columns: list[str],
        gone: list[str],
        sink_columns: dict[str, str],
        segment: pa.Table,
        stats: dict[str, int],
        batch: ChangeBatch,
    ) -> None:
        key = schema.primary_key
        folded = fold_changes(segment, key, schema.columns)
        unchanged = unchanged_as_text(folded["_cdc_unchanged"])
        has_unchanged = bool(pc.any(pc.not_equal(unchanged, "{}")).as_py())
        moved = pc.fill_null(pc.and_(folded[MOVED_COLUMN], pc.not_equal(unchanged, "{}")), False)
        has_moved = has_unchanged and bool(pc.any(moved).as_py())
        # The stage is LIKE the target (which has its own _cdc_op ...), so the batch's bookkeeping gets stage names.
        staged = folded.select([*columns, "_cdc_op", "_cdc_seq", "_cdc_ts_ms"]).rename_columns(
            [*columns, "_cdc_s_op", "_cdc_s_seq", "_cdc_s_ts_ms"]).append_column("_cdc_s_unchanged", unchanged)
        extra: list[sql.Composable] = [
            sql.SQL("_cdc_s_op text, _cdc_s_seq bigint, _cdc_s_ts_ms bigint, _cdc_s_unchanged text[]")
        ]
        from_columns = [f"_cdc_s_from_{i}" for i in range(len(key))]
        if has_moved:
            # Rows whose key changed and whose unchanged TOAST values live in the sink under their old key.
            staged = staged.append_column("_cdc_s_moved", moved)
            extra.append(sql.SQL("_cdc_s_moved boolean"))
            for name, stage_name in zip(key, from_columns):
                staged = staged.append_column(stage_name, folded[BEFORE_PREFIX + name])
                extra.append(sql.SQL("{} {}").format(sql.Identifier(stage_name), sql.SQL(sink_columns[name])))
        # Portable values load as PostgreSQL input, except binary, which needs its \x back (by the sink column's
        # type: a column the source dropped within the batch is converted too).
        binary = {name: "binary" for name in columns if sink_columns.get(name) == "bytea"}
        binary.update({stage_name: "binary" for name, stage_name in zip(key, from_columns)
                       if has_moved and sink_columns.get(name) == "bytea"})
        if binary:
            staged = pg_input_table(staged, binary)
        stats["staged"] += staged.num_rows

        target = sql.Identifier(self.target_schema, schema.name)
        stage = sql.Identifier("_cdc_stage")
        cur.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}, {}) ON COMMIT DROP").format(
            stage, target, sql.SQL(", ").join(extra)))
        copy_columns = sql.SQL(", ").join(map(sql.Identifier, staged.column_names))
        with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(stage, copy_columns)) as copy:
            # Arrow quotes every string and leaves NULL unquoted and empty, which is exactly CSV COPY's NULL
            # rule: "" is an empty string, nothing is NULL. Backslashes, tabs and newlines need no escaping.
            for chunk in staged.to_batches(max_chunksize=COPY_CHUNK_ROWS):
                out = pa.BufferOutputStream()
                pacsv.write_csv(chunk, out, _CSV_OPTIONS)
                copy.write(memoryview(out.getvalue()))

        on = sql.SQL(" AND ").join(
            sql.SQL("t.{0} = s.{0}").format(sql.Identifier(name)) for name in key
        )
        guard = sql.SQL("(t._cdc_position IS NULL OR t._cdc_position <= s._cdc_s_seq)")
        probe = sorted(self._key_columns(cur, schema.name)) == sorted(key)  # the sink table's primary key
        with _join_by_key_index(cur, probe, stage):
            if has_moved:
                self._fill_moved_from_sink(cur, stage, target, key, columns, folded, from_columns)
            if has_unchanged:
                self._refuse_unresolved(cur, stage, target, schema, key, on, batch, has_moved)
            # Deletes first, in a statement of their own: its row count is the number deleted (a MERGE's count
            # mixes them with upserts, and counting them apart cost a join of its own). The MERGE then upserts.
            if pc.any(pc.equal(staged["_cdc_s_op"], OP_DELETE)).as_py():
                cur.execute(self._delete_statement(target, stage, on, guard))
                stats["deleted"] += max(cur.rowcount, 0)
            cur.execute(self._merge_statement(target, stage, key, columns, gone, on, guard, has_unchanged))
            stats["upserted"] += max(cur.rowcount, 0)
        cur.execute(sql.SQL("DROP TABLE {}").format(stage))

    def _fill_moved_from_sink(
        self,
        cur: psycopg.Cursor,
        stage: sql.Identifier,
        target: sql.Identifier,
        key: list[str],
        columns: list[str],
        folded: pa.Table,
        from_columns: list[str],
    ) -> None:
        """Give rows whose key changed the unchanged values the sink holds under their old key.

        Runs before the ``MERGE``, which deletes the old key's row in the same statement that inserts the new one.
        The new key's own sink row (if any) is never a source: it belongs to another row (a key swap).
        """
        wanted = {name for names in folded["_cdc_unchanged"].to_pylist() for name in names or ()}
        fill = [name for name in columns if name in wanted]
        if not fill:
            return
        sets: list[sql.Composable] = [
            sql.SQL("{0} = CASE WHEN {1} = ANY(s._cdc_s_unchanged) THEN o.{0} ELSE s.{0} END").format(
                sql.Identifier(name), sql.Literal(name))
            for name in fill
        ]
        sets.append(sql.SQL("_cdc_s_unchanged = '{}'"))
        match = sql.SQL(" AND ").join(sql.SQL("o.{} = s.{}").format(sql.Identifier(name), sql.Identifier(from_))
                                      for name, from_ in zip(key, from_columns))
        live = sql.SQL(" AND o._cdc_deleted_at IS NULL") if self.delete_mode == "soft" else sql.SQL("")
        cur.execute(sql.SQL(
            "UPDATE {stage} AS s SET {sets} FROM {target} AS o"
            " WHERE s._cdc_s_moved AND s._cdc_s_op <> {d} AND {match}{live}"
        ).format(stage=stage, sets=sql.SQL(", ").join(sets), target=target, d=sql.Literal(OP_DELETE),
                 match=match, live=live))

    def _refuse_unresolved(
        self,
        cur: psycopg.Cursor,
        stage: sql.Identifier,
        target: sql.Identifier,
        schema: TableSchema,
        key: list[str],
        on: sql.Composable,
        batch: ChangeBatch,
        has_moved: bool,
    ) -> None:
        """Stop before writing a row with values nobody has: unchanged TOAST neither the batch nor the sink holds.

        Such a row would be inserted with NULL in place of a value the source still has (or, for a row whose key
        changed, take another row's value): silent divergence. A matched update keeps the sink's own value instead.
        """
        moved = sql.SQL("s._cdc_s_moved OR ") if has_moved else sql.SQL("")
        cur.execute(sql.SQL(
            "SELECT {keys}, s._cdc_s_unchanged FROM {stage} AS s WHERE s._cdc_s_op <> {d}"
            " AND s._cdc_s_unchanged <> '{{}}' AND ({moved}NOT EXISTS (SELECT 1 FROM {target} AS t WHERE {on}))"
            " ORDER BY s._cdc_s_seq LIMIT 5"
        ).format(keys=sql.SQL(", ").join(sql.SQL("s.{}::text").format(sql.Identifier(name)) for name in key),
                 stage=stage, d=sql.Literal(OP_DELETE), moved=moved, target=target, on=on))
        rows = cur.fetchall()
        if not rows:
            return
        first = rows[0]
        described = ", ".join(f"{name}={value}" for name, value in zip(key, first[:-1]))
        raise SinkError(
            self.sink_id,
            f"the row with key ({described}) of source table {schema.qualified_name} would be written without "
            f"the values of columns {list(first[-1])} (unchanged TOAST the source did not resend, and neither this "
            f"batch nor the sink has them){f' ({len(rows)} rows or more)' if len(rows) > 1 else ''}; nothing was "
            f"written. Re-snapshot the table: python -m airflow_provider_cdc resnapshot {batch.source_id} "
            f"--table {schema.qualified_name}",
            table=self._table_label(schema), batch_id=batch.batch_id, terminal=True,
        )

    def _delete_statement(self, target: sql.Identifier, stage: sql.Identifier, on: sql.Composable,
                          guard: sql.Composable) -> sql.Composed:
        """The batch's deletes of rows the sink holds (hard: removed; soft: marked), under the position guard."""
        ts = sql.SQL("to_timestamp(s._cdc_s_ts_ms / 1000.0)")
        where = sql.SQL("{on} AND s._cdc_s_op = {d} AND {guard}").format(on=on, d=sql.Literal(OP_DELETE), guard=guard)
        if self.delete_mode == "hard":
            return sql.SQL("DELETE FROM {target} AS t USING {stage} AS s WHERE {where}").format(
                target=target, stage=stage, where=where)
        return sql.SQL(
            "UPDATE {target} AS t SET _cdc_deleted_at = {ts}, _cdc_op = s._cdc_s_op, _cdc_position = s._cdc_s_seq,"
            " _cdc_ts = {ts} FROM {stage} AS s WHERE {where}"
        ).format(target=target, ts=ts, stage=stage, where=where)

    def _merge_statement(
        self,
        target: sql.Identifier,
        stage: sql.Identifier,
        key: list[str],
        columns: list[str],
        gone: list[str],
        on: sql.Composable,
        guard: sql.Composable,
        has_unchanged: bool,
    ) -> sql.Composed:
        ts = sql.SQL("to_timestamp(s._cdc_s_ts_ms / 1000.0)")
        updates: list[sql.Composable] = []
        for name in columns:
            if name in key:
                continue
            col = sql.Identifier(name)
            if has_unchanged:
                # Unchanged TOAST: the source did not send the value, so the sink keeps its own.
                updates.append(sql.SQL(
                    "{0} = CASE WHEN {1} = ANY(s._cdc_s_unchanged) THEN t.{0} ELSE s.{0} END"
                ).format(col, sql.Literal(name)))
            else:
                updates.append(sql.SQL("{0} = s.{0}").format(col))
        # Columns the source dropped: the sink keeps them for old rows, but a row changed since has no value there.
        updates += [sql.SQL("{} = NULL").format(sql.Identifier(name)) for name in gone]
        updates += [sql.SQL("_cdc_op = s._cdc_s_op"), sql.SQL("_cdc_position = s._cdc_s_seq"),
                    sql.SQL("_cdc_ts = {}").format(ts)]
        if self.delete_mode == "soft":
            updates.append(sql.SQL("_cdc_deleted_at = NULL"))
        insert_columns = [sql.Identifier(name) for name in columns] + [
            sql.Identifier("_cdc_op"), sql.Identifier("_cdc_position"), sql.Identifier("_cdc_ts")]
        insert_values = [sql.SQL("s.{}").format(sql.Identifier(name)) for name in columns] + [
            sql.SQL("s._cdc_s_op"), sql.SQL("s._cdc_s_seq"), ts]
        return sql.SQL(
            "MERGE INTO {target} AS t USING {stage} AS s ON {on}"
            " WHEN MATCHED AND s._cdc_s_op <> {d} AND {guard} THEN UPDATE SET {updates}"
            " WHEN NOT MATCHED AND s._cdc_s_op <> {d} THEN INSERT ({insert_columns}) VALUES ({insert_values})"
        ).format(
            target=target, stage=stage, on=on, d=sql.Literal(OP_DELETE), guard=guard,
            updates=sql.SQL(", ").join(updates), insert_columns=sql.SQL(", ").join(insert_columns),
            insert_values=sql.SQL(", ").join(insert_values),
        )


# Joins that read the whole target table: a batch would cost as much as a scan of the sink table, however small.
_WHOLE_TABLE_JOINS = ("enable_hashjoin", "enable_mergejoin")


@contextlib.contextmanager
def _join_by_key_index(cur: psycopg.Cursor, probe: bool, stage: sql.Identifier) -> Iterator[None]:
    """Within the block, the statements join the stage to the target by probing the target's index on the key
    (``probe``: its primary key is the key).

    The planner's own choice scans the whole target into a hash join whenever the batch is a sizeable part of it:
    10,000 deletes of a 50,000-change batch took 0.22 s against a 1,000,000-row table, as long as its scan, and the
    cost grows with the sink table, not the batch. Probes cost per staged row. A target without that index keeps
    the planner's choice, with statistics of the stage (``ANALYZE``) to make it: there a probe would be a scan.
    The settings are ``SET LOCAL`` and restored on leaving, for the other tables of the batch."""
    if not probe:
        cur.execute(sql.SQL("ANALYZE {}").format(stage))
        yield
        return
    cur.execute("SELECT " + ", ".join(f"current_setting('{name}')" for name in _WHOLE_TABLE_JOINS))
    previous = cur.fetchone() or ()
    for name in _WHOLE_TABLE_JOINS:
        cur.execute("SELECT set_config(%s, 'off', true)", (name,))
    try:
        yield
    finally:
        if cur.connection.info.transaction_status == TransactionStatus.INTRANS:
            for name, value in zip(_WHOLE_TABLE_JOINS, previous):
                cur.execute("SELECT set_config(%s, %s, true)", (name, value))


def unchanged_as_text(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``_unchanged`` (list<string>) as PostgreSQL array literals for COPY: ``{"a","b"}``, NULL when absent."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.null_count == len(values):
        return pa.nulls(len(values), pa.string())
    elements = pc.list_flatten(values)
    escaped = pc.replace_substring(pc.replace_substring(elements, "\\", "\\\\"), '"', '\\"')
    quoted = pc.binary_join_element_wise('"', escaped, '"', "")
    offsets = pc.subtract(values.offsets, values.offsets[0])
    lists = pa.ListArray.from_arrays(offsets, quoted, mask=values.is_null())
    return pc.binary_join_element_wise("{", pc.binary_join(lists, ","), "}", "")
