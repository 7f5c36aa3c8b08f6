"""Rows into a MySQL sink: fold each table's changes per key, stage them, then one guarded upsert.

Per run of events between truncates (as the PostgreSQL sink, :mod:`airflow_provider_cdc.connectors.postgres.merge`):

1. **fold** with the shared :func:`~airflow_provider_cdc.fold.fold_changes` (last write per key wins, a delete after
   an insert is a delete, a key update arrives as a delete of the old key and a ``moved`` row under the new one);
2. **check** every value the sink cannot hold exactly, in Arrow, before anything is written
   (:func:`~.sink_types.check_values`, key lengths, json nested deeper than MariaDB's JSON takes), and convert the
   portable text to MySQL input (:func:`~.sink_types.to_mysql_input`);
3. **stage** the folded rows in a ``TEMPORARY`` table of the target's own column types (a temporary table is
   created and dropped without committing the transaction), with ``LOAD DATA LOCAL INFILE`` from a tab-separated
   file built by Arrow compute. Measured here on 10,000 rows of six columns (text with tabs, decimal, timestamp,
   binary, boolean, key), staging took 36-41 ms with ``LOAD DATA`` against 94-98 ms with multi-row ``INSERT``
   statements with parameters (the whole apply 113-127 ms against 191-194 ms), so ``LOAD DATA`` is the default
   and the ``INSERT`` the fallback for a server that refuses local files (MySQL 8's default ``local_infile=OFF``).
   ``LOAD DATA LOCAL`` downgrades bad values to warnings even in strict mode, and MySQL rounds a decimal with only
   a note: any warning that a value was changed stops the batch, naming the column and the row's key (nothing was
   written);
4. **merge**: values the source did not send (``_cdc_unchanged``) are filled into the stage from the sink's row
   (under the old key for a moved row), a row whose values nobody has is refused; deletes are one guarded
   ``DELETE ... JOIN`` (or, soft, an ``UPDATE`` setting ``_cdc_deleted_at``); upserts are ONE
   ``INSERT INTO t (...) SELECT ... FROM stage ON DUPLICATE KEY UPDATE``. MySQL evaluates those assignments left
   to right and later ones see earlier results, so every column is guarded by
   ``IF(t._cdc_position IS NULL OR t._cdc_position <= s.seq, s.col, t.col)`` and ``_cdc_position`` is assigned
   last: an older change never overwrites a newer one, and a soft-deleted row comes back to life on a re-insert.
   The stage's columns are named in the update (``s.col``): that works on MySQL and MariaDB alike, where the
   ``AS new`` row alias is MySQL-only and ``VALUES()`` deprecated on MySQL.

Counts: MySQL reports 1 per inserted row and 2 per changed row of an upsert; the rows the stage matches are counted
first, so ``upserted`` is rows inserted plus rows changed (a row already holding exactly the staged values counts
as none).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pymysql
from pymysql.cursors import Cursor

from airflow_provider_cdc.connectors.mysql.sink_ddl import SinkColumn
from airflow_provider_cdc.connectors.mysql.sink_storage import (
    DATA_WARNINGS,
    HARMLESS_WARNINGS,
    fetch_one,
    run,
    sql_name,
    sql_table,
    sql_type,
    warnings_of,
)
from airflow_provider_cdc.connectors.mysql.sink_types import (
    TEXT_BASES,
    UnstorableValue,
    base_of,
    check_values,
    first_too_deep,
    needs_unhex,
    over_length,
    stage_type,
    to_mysql_input,
)
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import BEFORE_PREFIX, OP_DELETE, OP_TRUNCATE, ChangeBatch
from airflow_provider_cdc.fold import MOVED_COLUMN, fold_changes, normalise_key_text, plan_table
from airflow_provider_cdc.tables import Column, TableSchema

log = logging.getLogger("airflow_provider_cdc.sink.mysql")

STAGE_TABLE = "_cdc_stage"
LOAD_CHUNK_ROWS = 65_536  # rows formatted at a time into the staging file: bounds the extra memory of the text
INSERT_ROWS = 1_000  # rows per statement of the INSERT fallback
# The server (or the client library) refuses LOAD DATA LOCAL: fall back to INSERT.
_LOCAL_INFILE_REFUSED = frozenset({1148, 2068, 3948, 4166})
_ROW_OF_WARNING = re.compile(r"\bat row (\d+)")
_TAB, _NEWLINE, _EMPTY = (pa.scalar(text, pa.large_string()) for text in ("\t", "\n", ""))


class RowMerge:
    """The row half of :class:`~airflow_provider_cdc.connectors.mysql.sink.MySqlSink`."""

    sink_id: str
    target_schema: str
    delete_mode: str
    stage_method: str  # "load_data" or "insert"
    json_max_depth: int | None  # the deepest json the server's JSON column validates (MariaDB); None: no check

    if TYPE_CHECKING:  # from TableDdl
        def _existing_columns(self, cur: Cursor, table: str) -> dict[str, SinkColumn] | None: ...

        def _table_label(self, schema: TableSchema) -> str: ...

    def _apply_table(
        self, cur: Cursor, schema: TableSchema, changes: pa.Table, high_water: int, batch: ChangeBatch
    ) -> dict[str, int]:
        """Apply one table's events: segments between truncates are folded and merged, in ``seq`` order."""
        plan = plan_table(changes, high_water)
        stats = plan.stats
        if plan.changes.num_rows == 0:
            return stats
        sink_columns = self._existing_columns(cur, schema.name) or {}
        columns, gone = plan.columns_for(sink_columns)
        described = _columns_of(schema, batch)
        for kind, part in plan.parts():
            if kind == "merge":
                self._merge_segment(cur, schema, columns, gone, sink_columns, described, part, stats, batch)
            else:
                self._truncate(cur, schema, part[0], part[1], stats)
        return stats

    def _truncate(self, cur: Cursor, schema: TableSchema, seq: int, ts_ms: int | None, stats: dict[str, int]) -> None:
        """Remove (or, soft, mark) the rows older than the truncate; newer rows were written after it."""
        target = sql_table(self.target_schema, schema.name)
        if self.delete_mode == "hard":
            rows = run(cur, f"DELETE FROM {target} WHERE _cdc_position IS NULL OR _cdc_position < %s", (seq,))
        else:
            rows = run(cur, f"UPDATE {target} SET _cdc_deleted_at = FROM_UNIXTIME(%s / 1000), _cdc_op = %s,"
                            f" _cdc_position = %s, _cdc_ts = FROM_UNIXTIME(%s / 1000)"
                            f" WHERE _cdc_deleted_at IS NULL AND (_cdc_position IS NULL OR _cdc_position < %s)",
                       (ts_ms, OP_TRUNCATE, seq, ts_ms, seq))
        stats["truncates"] += 1
        stats["truncated_rows"] += max(rows, 0)

    # --- one segment ------------------------------------------------------------------------------------------

    def _merge_segment(
        self,
        cur: Cursor,
        schema: TableSchema,
        columns: list[str],
        gone: list[str],
        sink_columns: dict[str, SinkColumn],
        described: dict[str, Column],
        segment: pa.Table,
        stats: dict[str, int],
        batch: ChangeBatch,
    ) -> None:
        key = schema.primary_key
        folded = fold_changes(segment, key, schema.columns)
        label = self._table_label(schema)
        unchanged = _unchanged_flags(folded["_cdc_unchanged"], columns)
        has_unchanged = bool(unchanged)
        any_flag = _any(list(unchanged.values()), folded.num_rows)
        moved = pc.and_(pc.fill_null(folded[MOVED_COLUMN], False), any_flag)
        has_moved = has_unchanged and bool(pc.any(moved).as_py())
        from_columns = [f"_cdc_s_from_{i}" for i in range(len(key))]

        # The stage: source columns in the target's types, then the batch's bookkeeping under stage names.
        stage: list[tuple[str, pa.Array, str, SinkColumn | None, bool]] = []  # name, values, type, column, unhex
        for name in columns:
            info = sink_columns[name]
            column = described.get(name) or Column(name, "", "other")
            values = self._prepared(folded[name], column, info, name in key, schema, folded, key, label, batch)
            stage.append((name, values, stage_type(info.type, column.logical_type), info,
                          needs_unhex(column.logical_type, info.type)))
        stage += [("_cdc_s_op", _text(folded["_cdc_op"]), "VARCHAR(1)", None, False),
                  ("_cdc_s_seq", _text(folded["_cdc_seq"]), "BIGINT", None, False),
                  ("_cdc_s_ts_ms", _text(folded["_cdc_ts_ms"]), "BIGINT", None, False),
                  ("_cdc_s_row", _text(pa.array(np.arange(folded.num_rows))), "BIGINT", None, False)]
        flag_names = {name: f"_cdc_s_u{i}" for i, name in enumerate(unchanged)}
        for name, flags in unchanged.items():
            stage.append((flag_names[name], _text(pc.cast(flags, pa.int8())), "TINYINT", None, False))
        if has_moved:
            stage.append(("_cdc_s_moved", _text(pc.cast(moved, pa.int8())), "TINYINT", None, False))
            for name, stage_name in zip(key, from_columns):
                key_info = sink_columns[name]
                column = described.get(name) or Column(name, "", "other")
                values = self._prepared(folded[BEFORE_PREFIX + name], column, key_info, True, schema, folded, key,
                                        label, batch)
                stage.append((stage_name, values, key_info.type, key_info,
                              needs_unhex(column.logical_type, key_info.type)))
        stats["staged"] += folded.num_rows

        target = sql_table(self.target_schema, schema.name)
        stage_table = sql_table(self.target_schema, STAGE_TABLE)
        run(cur, f"DROP TEMPORARY TABLE IF EXISTS {stage_table}")
        definitions = []
        for name, _, type_, column_info, _ in stage:
            collation = (f" COLLATE {column_info.collation}" if column_info is not None and column_info.collation
                         and base_of(type_) in TEXT_BASES else "")
            definitions.append(f"{sql_name(name)} {sql_type(type_)}{collation} NULL")
        run(cur, f"CREATE TEMPORARY TABLE {stage_table} ({', '.join(definitions)}) ENGINE=InnoDB"
                 f" DEFAULT CHARSET=utf8mb4")
        self._load_stage(cur, stage_table, stage, folded, key, schema, label, batch)

        on = _match("t", key, "s", key)
        guard = "(t._cdc_position IS NULL OR t._cdc_position <= s._cdc_s_seq)"
        if has_unchanged:
            self._fill_unchanged(cur, stage_table, target, key, on, flag_names, from_columns if has_moved else None)
            self._refuse_unresolved(cur, stage_table, target, schema, key, on, flag_names,
                                    from_columns if has_moved else None, folded, label, batch)
        ops = folded["_cdc_op"]
        deletes = int(pc.sum(pc.cast(pc.equal(ops, OP_DELETE), pa.int64())).as_py() or 0)
        if deletes:
            if self.delete_mode == "hard":
                # The target by its full name, not an alias: MariaDB resolves ``DELETE t`` in the session's default
                # database, and a sink connection may have none.
                deleted = run(cur, f"DELETE {target} FROM {target} JOIN {stage_table} AS s"
                                   f" ON {_match(target, key, 's', key)} WHERE s._cdc_s_op = %s AND"
                                   f" ({target}._cdc_position IS NULL OR {target}._cdc_position <= s._cdc_s_seq)",
                              (OP_DELETE,))
            else:
                deleted = run(cur, f"UPDATE {target} AS t JOIN {stage_table} AS s ON {on}"
                                   f" SET t._cdc_deleted_at = FROM_UNIXTIME(s._cdc_s_ts_ms / 1000),"
                                   f" t._cdc_op = s._cdc_s_op, t._cdc_ts = FROM_UNIXTIME(s._cdc_s_ts_ms / 1000),"
                                   f" t._cdc_position = s._cdc_s_seq WHERE s._cdc_s_op = %s AND {guard}",
                              (OP_DELETE,))
            self._refuse_changed_values(cur, "the deletes", folded, key, schema, label, batch)
            stats["deleted"] += max(deleted, 0)
        upserts = folded.num_rows - deletes
        if upserts:
            (matched,) = fetch_one(cur, f"SELECT COUNT(*) FROM {stage_table} AS s JOIN {target} AS t ON {on}"
                                        f" WHERE s._cdc_s_op <> %s", (OP_DELETE,))
            affected = run(cur, self._upsert_statement(target, stage_table, key, columns, gone), (OP_DELETE,))
            self._refuse_changed_values(cur, "the upsert", folded, key, schema, label, batch)
            inserted = upserts - int(matched)
            stats["upserted"] += inserted + max(affected - inserted, 0) // 2
        run(cur, f"DROP TEMPORARY TABLE {stage_table}")

    def _prepared(self, values: pa.ChunkedArray, column: Column, info: SinkColumn, is_key: bool,
                  schema: TableSchema, folded: pa.Table, key: list[str], label: str, batch: ChangeBatch) -> pa.Array:
        """One column's folded values, checked and converted to MySQL input (see the module docstring)."""
        if is_key and base_of(info.type) in TEXT_BASES and column.logical_type == "decimal":
            # Stored as text, a decimal key is kept in one spelling: 1.0 and 1.00 are one key at the source.
            values = normalise_key_text(values, column)
        try:
            check_values(values, column, info.type, schema.dialect)
        except UnstorableValue as exc:
            row = _first_index(values, exc.value)
            raise SinkError(
                self.sink_id,
                f"source table {schema.qualified_name}, column {column.name!r} ({column.logical_type}"
                f"{'' if column.source_type in ('', column.logical_type) else ', ' + column.source_type}): value "
                f"{exc.value[:80]!r}{_key_text(folded, key, row)} cannot be stored in a MySQL {info.type} column: "
                f"{exc.reason}, so nothing of this batch was written."
                f" Change the value at the source, or load this source into a sink of its own dialect",
                table=label, batch_id=batch.batch_id, terminal=True,
            ) from exc
        if self.json_max_depth is not None and column.logical_type == "json" and base_of(info.type) == "longtext":
            self._refuse_too_deep(values, column, self.json_max_depth, schema, folded, key, label, batch)
        if is_key:
            long_value = over_length(values, info.type)
            if long_value is not None:
                row = _first_index(values, long_value)
                raise SinkError(
                    self.sink_id,
                    f"source table {schema.qualified_name}: key column {column.name!r} has a value of "
                    f"{len(long_value)} characters ({long_value[:40]!r}...{_key_text(folded, key, row)}), longer than "
                    f"the sink's {info.type} key column holds (an index needs a bounded length; MySQL would cut it, "
                    f"and two keys could become one), so nothing of this batch was written. Shorten the key at the "
                    f"source, or load this table into another kind of sink",
                    table=label, batch_id=batch.batch_id, terminal=True,
                )
        return to_mysql_input(values, column.logical_type, info.type)

    def _refuse_too_deep(self, values: pa.ChunkedArray, column: Column, limit: int, schema: TableSchema,
                         folded: pa.Table, key: list[str], label: str, batch: ChangeBatch) -> None:
        """Stop at a json value nested deeper than MariaDB's JSON column takes, naming it, before the server does
        (its own error, "CONSTRAINT `t.col` failed", names neither the row nor the reason)."""
        found = first_too_deep(values, limit)
        if found is None:
            return
        text, depth = found
        raise SinkError(
            self.sink_id,
            f"source table {schema.qualified_name}, column {column.name!r} (json): value {text[:80]!r}"
            f"{_key_text(folded, key, _first_index(values, text))} is nested {depth} levels deep, and a MariaDB JSON "
            f"column holds at most {limit} levels (json_valid refuses deeper documents), so nothing of this batch "
            f"was written. Flatten the value at the source (or filter the row in a transformation rule), or load "
            f"this source into a sink that holds it (PostgreSQL, Delta)",
            table=label, batch_id=batch.batch_id, terminal=True,
        )

    # --- staging ----------------------------------------------------------------------------------------------

    def _load_stage(self, cur: Cursor, stage_table: str, stage: list[tuple[str, pa.Array, str, SinkColumn | None,
                    bool]], folded: pa.Table, key: list[str], schema: TableSchema, label: str,
                    batch: ChangeBatch) -> None:
        if self.stage_method == "load_data":
            try:
                self._load_data(cur, stage_table, stage)
            except pymysql.err.MySQLError as exc:
                if not (exc.args and exc.args[0] in _LOCAL_INFILE_REFUSED):
                    raise
                log.warning("sink %s: the server refuses LOAD DATA LOCAL INFILE (%s); staging rows with multi-row "
                            "INSERT from now on (slower: set local_infile=ON on the server)", self.sink_id, exc)
                self.stage_method = "insert"
                run(cur, f"DELETE FROM {stage_table}")
            else:
                self._refuse_changed_values(cur, "staging", folded, key, schema, label, batch)
                return
        self._insert_rows(cur, stage_table, stage, folded, key, schema, label, batch)

    def _load_data(self, cur: Cursor, stage_table: str,
                   stage: list[tuple[str, pa.Array, str, SinkColumn | None, bool]]) -> None:
        """``LOAD DATA LOCAL INFILE`` from MySQL's own text format (tab-separated, ``\\N`` for NULL, backslash
        escapes), written by Arrow compute straight from the columns."""
        targets, setters = [], []
        for i, (name, _, _, _, unhex) in enumerate(stage):
            if unhex:
                targets.append(f"@v{i}")
                setters.append(f"{sql_name(name)} = UNHEX(@v{i})")
            else:
                targets.append(sql_name(name))
        fd, path = tempfile.mkstemp(prefix="cdc-mysql-stage-", suffix=".tsv")
        try:
            with os.fdopen(fd, "wb") as out:
                rows = len(stage[0][1])
                for start in range(0, rows, LOAD_CHUNK_ROWS):
                    escaped = [_escaped(values.slice(start, LOAD_CHUNK_ROWS)) for _, values, _, _, _ in stage]
                    fields = pc.binary_join_element_wise(*escaped, _TAB, null_handling="replace",
                                                         null_replacement="\\N")
                    lines = pc.binary_join_element_wise(fields, _NEWLINE, _EMPTY)
                    out.write(_data_bytes(lines))
            run(cur, f"LOAD DATA LOCAL INFILE %s INTO TABLE {stage_table} CHARACTER SET utf8mb4"
                     f" FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n'"
                     f" ({', '.join(targets)}){' SET ' + ', '.join(setters) if setters else ''}", (path,))
        finally:
            os.unlink(path)

    def _insert_rows(self, cur: Cursor, stage_table: str,
                     stage: list[tuple[str, pa.Array, str, SinkColumn | None, bool]], folded: pa.Table,
                     key: list[str], schema: TableSchema, label: str, batch: ChangeBatch) -> None:
        """The fallback: multi-row ``INSERT`` statements with parameters (binary as bytes)."""
        names = ", ".join(sql_name(name) for name, *_ in stage)
        columns: list[list[Any]] = []
        for _, values, _, _, unhex in stage:
            items = values.to_pylist()
            columns.append([None if v is None else bytes.fromhex(v) for v in items] if unhex else items)
        rows = list(zip(*columns))
        placeholder = f"({', '.join(['%s'] * len(stage))})"
        for start in range(0, len(rows), INSERT_ROWS):
            part = rows[start:start + INSERT_ROWS]
            try:
                run(cur, f"INSERT INTO {stage_table} ({names}) VALUES {', '.join([placeholder] * len(part))}",
                    [value for row in part for value in row])
            except pymysql.err.MySQLError as exc:
                if exc.args and exc.args[0] in DATA_WARNINGS:  # strict mode: an error where LOAD DATA warns
                    raise self._value_refusal(f"Error {exc.args[0]}: {exc.args[1]}", "staging", folded, key, schema,
                                              label, batch, start) from exc
                raise
            self._refuse_changed_values(cur, "staging", folded, key, schema, label, batch, offset=start)

    def _refuse_changed_values(self, cur: Cursor, step: str, folded: pa.Table, key: list[str], schema: TableSchema,
                               label: str, batch: ChangeBatch, offset: int = 0) -> None:
        """Stop when the server changed a value on its way in (a warning: truncated, rounded, out of range)."""
        found = warnings_of(cur)
        refused = [w for w in found if w[1] in DATA_WARNINGS or (w[0] != "Note" and w[1] not in HARMLESS_WARNINGS)]
        for level, code, message in found:
            if (level, code, message) not in refused:
                log.info("sink %s, table %s: %s: %s %d: %s", self.sink_id, label, step, level, code, message)
        if refused:
            level, code, message = refused[0]
            more = f"; {len(refused) - 1} more" if len(refused) > 1 else ""
            raise self._value_refusal(f"{level} {code}: {message}{more}", step, folded, key, schema, label, batch,
                                      offset)

    def _value_refusal(self, problem: str, step: str, folded: pa.Table, key: list[str], schema: TableSchema,
                       label: str, batch: ChangeBatch, offset: int) -> SinkError:
        """The error of a value the server would not store exactly; a staging row number names the row's key."""
        match = _ROW_OF_WARNING.search(problem)
        row = offset + int(match[1]) - 1 if match and step == "staging" else None
        return SinkError(
            self.sink_id,
            f"source table {schema.qualified_name}: MySQL would not store a value exactly ({problem}"
            f"{_key_text(folded, key, row)}), so nothing of this batch was written. Change the value at the source, "
            f"or the sink column's type",
            table=label, batch_id=batch.batch_id, terminal=True,
        )

    # --- values the source did not send -----------------------------------------------------------------------

    def _fill_unchanged(self, cur: Cursor, stage_table: str, target: str, key: list[str], on: str,
                        flag_names: dict[str, str], from_columns: list[str] | None) -> None:
        """Give staged rows the values the source did not send, from the sink's row: under the same key, or, for a
        row whose key changed (moved), under its old key (never the new key's row: it belongs to another row).

        Only stage columns are assigned, each from its own flag, so the order MySQL assigns them in does not
        matter."""
        sets = ", ".join(f"s.{sql_name(name)} = IF(s.{flag}, o.{sql_name(name)}, s.{sql_name(name)})"
                         for name, flag in flag_names.items())
        flagged = " OR ".join(f"s.{flag} = 1" for flag in flag_names.values())
        in_place = _match("o", key, "s", key)
        moved_clause = " AND s._cdc_s_moved = 0" if from_columns else ""
        run(cur, f"UPDATE {stage_table} AS s JOIN {target} AS o ON {in_place} SET {sets}"
                 f" WHERE s._cdc_s_op <> %s{moved_clause} AND ({flagged})", (OP_DELETE,))
        if from_columns:
            match = _match("o", key, "s", from_columns)
            live = " AND o._cdc_deleted_at IS NULL" if self.delete_mode == "soft" else ""
            run(cur, f"UPDATE {stage_table} AS s JOIN {target} AS o ON {match}{live} SET {sets}"
                     f" WHERE s._cdc_s_op <> %s AND s._cdc_s_moved = 1 AND ({flagged})", (OP_DELETE,))

    def _refuse_unresolved(self, cur: Cursor, stage_table: str, target: str, schema: TableSchema, key: list[str],
                           on: str, flag_names: dict[str, str], from_columns: list[str] | None, folded: pa.Table,
                           label: str, batch: ChangeBatch) -> None:
        """Stop before writing a row with values nobody has: values the source did not send that neither the batch
        nor the sink holds. Such a row would be inserted with NULL in place of a value the source still has (or,
        for a row whose key changed, take another row's value): silent divergence."""
        flagged = " OR ".join(f"s.{flag} = 1" for flag in flag_names.values())
        missing = f"NOT EXISTS (SELECT 1 FROM {target} AS t WHERE {on})"
        if from_columns:
            match = _match("o", key, "s", from_columns)
            live = " AND o._cdc_deleted_at IS NULL" if self.delete_mode == "soft" else ""
            missing = (f"((s._cdc_s_moved = 1 AND NOT EXISTS (SELECT 1 FROM {target} AS o WHERE {match}{live}))"
                       f" OR (s._cdc_s_moved = 0 AND {missing}))")
        run(cur, f"SELECT s._cdc_s_row FROM {stage_table} AS s WHERE s._cdc_s_op <> %s AND ({flagged}) AND {missing}"
                 f" ORDER BY s._cdc_s_seq LIMIT 5", (OP_DELETE,))
        rows = [int(row) for (row,) in cur.fetchall()]
        if not rows:
            return
        first = rows[0]
        described = ", ".join(f"{name}={folded[name][first].as_py()}" for name in key)
        unsent = [name for name in folded["_cdc_unchanged"][first].as_py() or () if name in flag_names]
        raise SinkError(
            self.sink_id,
            f"the row with key ({described}) of source table {schema.qualified_name} would be written without the "
            f"values of columns {unsent} (values the source did not send, and neither this batch nor the sink has "
            f"them){f' ({len(rows)} rows or more)' if len(rows) > 1 else ''}; nothing was written. Re-snapshot the "
            f"table: python -m airflow_provider_cdc resnapshot {batch.source_id} --table {schema.qualified_name}",
            table=label, batch_id=batch.batch_id, terminal=True,
        )

    # --- the upsert --------------------------------------------------------------------------------------------

    def _upsert_statement(self, target: str, stage_table: str, key: list[str], columns: list[str],
                          gone: list[str]) -> str:
        """``INSERT ... SELECT ... ON DUPLICATE KEY UPDATE`` guarded per column (module docstring)."""
        guard = f"({target}._cdc_position IS NULL OR {target}._cdc_position <= s._cdc_s_seq)"
        ts = "FROM_UNIXTIME(s._cdc_s_ts_ms / 1000)"

        def guarded(name: str, new: str) -> str:
            return f"{sql_name(name)} = IF({guard}, {new}, {target}.{sql_name(name)})"

        updates = [guarded(name, f"s.{sql_name(name)}") for name in columns if name not in key]
        # Columns the source dropped: the sink keeps them for old rows, but a row changed since has no value there.
        updates += [guarded(name, "NULL") for name in gone]
        updates += [guarded("_cdc_op", "s._cdc_s_op"), guarded("_cdc_ts", ts)]
        if self.delete_mode == "soft":
            updates.append(guarded("_cdc_deleted_at", "NULL"))
        updates.append(guarded("_cdc_position", "s._cdc_s_seq"))  # last: every guard above reads the old position
        insert_columns = [*map(sql_name, columns), "_cdc_op", "_cdc_position", "_cdc_ts"]
        values = [*(f"s.{sql_name(name)}" for name in columns), "s._cdc_s_op", "s._cdc_s_seq", ts]
        return (f"INSERT INTO {target} ({', '.join(insert_columns)}) SELECT {', '.join(values)}"
                f" FROM {stage_table} AS s WHERE s._cdc_s_op <> %s ON DUPLICATE KEY UPDATE {', '.join(updates)}")


# --- helpers ------------------------------------------------------------------------------------------------------


def _columns_of(schema: TableSchema, batch: ChangeBatch) -> dict[str, Column]:
    """The batch's columns of ``schema``'s table by name: the final schema's, and those of its earlier schemas in
    the batch (a column dropped within the batch still carries values)."""
    out: dict[str, Column] = {}
    for change in batch.schema_changes:
        if change.table == schema.qualified_name:
            for each in (change.before, change.after):
                if each is not None:
                    out.update({col.name: col for col in each.columns})
    out.update({col.name: col for col in schema.columns})
    return out


def _match(left: str, left_names: Sequence[str], right: str, right_names: Sequence[str]) -> str:
    """``left.a = right.b AND ...`` over pairs of columns."""
    return " AND ".join(f"{left}.{sql_name(a)} = {right}.{sql_name(b)}" for a, b in zip(left_names, right_names))


def _text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values if pa.types.is_string(values.type) else pc.cast(values, pa.string())


def _escaped(values: pa.Array) -> pa.Array:
    """Text for LOAD DATA's default format: backslash, tab and newline escaped (NULL is written as ``\\N``)."""
    values = pc.replace_substring(pc.cast(values, pa.large_string()), "\\", "\\\\")
    values = pc.replace_substring(values, "\t", "\\t")
    return pc.replace_substring(values, "\n", "\\n")


def _data_bytes(lines: pa.Array | pa.ChunkedArray) -> bytes:
    """The concatenated text of a string array, straight from its data buffer."""
    if isinstance(lines, pa.ChunkedArray):
        return b"".join(_data_bytes(chunk) for chunk in lines.chunks)
    if len(lines) == 0:
        return b""
    width = 8 if pa.types.is_large_string(lines.type) else 4
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64 if width == 8 else np.int32, count=len(lines) + 1,
                            offset=lines.offset * width)
    return memoryview(lines.buffers()[2])[int(offsets[0]):int(offsets[-1])].tobytes()


def _unchanged_flags(lists: pa.ChunkedArray, columns: Sequence[str]) -> dict[str, pa.Array]:
    """For every sink column some row did not get a value for: a boolean per row, True where it was not sent."""
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    if lists.null_count == len(lists):
        return {}
    names = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    wanted = [name for name in columns if name in set(names.to_pylist())]
    flags = {}
    for name in wanted:
        mask = np.zeros(len(lists), dtype=bool)
        mask[parents[pc.equal(names, name).to_numpy(zero_copy_only=False)]] = True
        flags[name] = pa.array(mask)
    return flags


def _any(flags: list[pa.Array], rows: int) -> pa.Array:
    out = pa.array(np.zeros(rows, dtype=bool))
    for flag in flags:
        out = pc.or_(out, flag)
    return out


def _first_index(values: pa.Array | pa.ChunkedArray, value: str) -> int | None:
    index = pc.index(values, value).as_py()
    return None if index is None or index < 0 else int(index)


def _key_text(folded: pa.Table, key: list[str], row: int | None) -> str:
    """`` in the row with key (id=5)`` for a folded row, '' when unknown."""
    if row is None or not 0 <= row < folded.num_rows:
        return ""
    return " in the row with key (" + ", ".join(f"{name}={folded[name][row].as_py()}" for name in key) + ")"
