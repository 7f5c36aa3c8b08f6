"""PgSource.read_ahead on a real server: one peek reads several batches, and every batch cut from it is the batch a
peek of its own returns (events, seq numbers, positions), across relations and an enum type announced before the
cut, a column added mid-backlog, unchanged TOAST, a key update, a truncate, a transaction larger than a batch, a slot
acknowledged part-way and a replay from an older position."""

from __future__ import annotations

import pytest

from airflow_provider_cdc.connectors.postgres.source import PgSource
from connectors.postgres.test_source import SLOT, execute, make_source, stream_position

TABLES = (("public", "items"), ("public", "notes"))


def plain_source(url: str) -> PgSource:
    """A second reader on a slot of its own, created at the same point: it acknowledges apart."""
    return PgSource(url, source_id="t", tables=list(TABLES), slot_name=f"{SLOT}_plain", publication_name="cdc_t_pub")


@pytest.fixture
def backlog(pg_database):
    """Two tables in one publication; both slots are created before the backlog is written."""
    execute(pg_database,
            # An enum: pgoutput announces its type (a Type message) before the relation that uses it.
            "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
            "CREATE TABLE items (id int PRIMARY KEY, name text, doc text, mood mood)",
            "CREATE TABLE notes (id int PRIMARY KEY, body text)",
            "ALTER TABLE items ALTER COLUMN doc SET STORAGE EXTERNAL")
    with make_source(pg_database, tables=TABLES) as source, plain_source(pg_database) as plain:
        plain.prepare()  # first: a position may be ahead of a slot, never behind it
        start = stream_position(source)
    big = "x" * 20_000  # stored out of line: an update of another column sends it as unchanged TOAST
    statements = [f"INSERT INTO items VALUES ({i}, 'item {i}', {repr(big) if i % 7 == 0 else 'NULL'},"
                  f" '{('sad', 'ok', 'happy')[i % 3]}')" for i in range(1, 41)]
    statements += [f"INSERT INTO notes VALUES ({i}, 'note {i}')" for i in range(1, 21)]
    statements += [f"UPDATE items SET name = 'renamed {i}' WHERE id = {i}" for i in range(1, 41, 3)]
    statements += ["ALTER TABLE items ADD COLUMN price numeric(8,2)",
                   "UPDATE items SET price = id * 1.5 WHERE id <= 12",
                   "BEGIN; UPDATE items SET id = id + 1000 WHERE id = 7; UPDATE notes SET body = 'moved' WHERE id = 3;"
                   " COMMIT",
                   # One transaction larger than a batch: it stays whole, in a batch of its own.
                   "INSERT INTO notes SELECT g, 'bulk ' || g FROM generate_series(100, 129) g",
                   # One larger than a peek's cap for a batch (4 batches + 1,000 messages), written after a few
                   # small ones: a batch never takes it whole, it is read in windows.
                   "INSERT INTO notes VALUES (130, 'small 1')", "INSERT INTO notes VALUES (131, 'small 2')",
                   "INSERT INTO notes SELECT g, 'huge ' || g FROM generate_series(1000, 2199) g",
                   "TRUNCATE notes",
                   "SELECT pg_logical_emit_message(true, 'cdc_heartbeat', 'beat')"]
    statements += [f"INSERT INTO notes VALUES ({i}, 'after truncate {i}')" for i in range(200, 215)]
    execute(pg_database, *statements)
    return pg_database, start


def counted_peeks(source: PgSource) -> list[int]:
    """Count the source's peeks (each decodes the slot from its restart_lsn again)."""
    calls: list[int] = []
    real = source._peek_messages

    def peek(limit, cap=None, upto=None):
        calls.append(limit)
        return real(limit, cap, upto)

    source._peek_messages = peek  # type: ignore[method-assign]
    return calls


def comparable(event: dict) -> dict:
    """An event without its NULL columns: a batch lines its table's events up on the newest columns it holds, so
    an event from before a column was added carries that column as NULL when the same batch also holds the change
    that added it, and not otherwise (batch boundaries may differ between the two readers)."""
    images = {key: {name: value for name, value in (event[key] or {}).items() if value is not None}
              for key in ("before", "after")}
    return {**event, **images}


def drain(source: PgSource, start: dict, batch_size: int, *, acknowledge_every: int = 0,
          replay_after: int | None = None) -> tuple[list[dict], list[dict]]:
    """Capture the backlog batch by batch (acknowledging every ``acknowledge_every`` batches); returns the events
    and the positions between batches. With ``replay_after``, that many batches in, a capture from the first
    batch's end (a cleared task; by then a read-ahead was read from a later position) must return the events that
    followed there the first time."""
    events: list[dict] = []
    position, positions, starts = start, [start], [0]
    while not (batch := source.capture(position, batch_size)).is_empty:
        # At most the peek's cap (4 batches and 1,000 messages): whole transactions up to it, or windows.
        assert batch.position_from["lsn"] == position["lsn"] and batch.change_count <= 4 * batch_size + 1000
        events += [comparable(event.to_dict()) for event in batch.events()]
        position = batch.position_to
        positions.append(position)
        starts.append(len(events))
        if acknowledge_every and (len(positions) - 1) % acknowledge_every == 0:
            source.acknowledge(position)  # the slot moves part-way into what was read ahead
        if replay_after is not None and len(positions) - 1 == replay_after:
            again = [comparable(event.to_dict()) for event in source.capture(positions[1], batch_size).events()]
            assert again and again == events[starts[1]:starts[1] + len(again)]
    return events, positions


def side_by_side(url: str, start: dict, batch_size: int, **kwargs) -> tuple[int, int, list[str]]:
    """Drain with a read-ahead source and with a plain one (each on its own slot): the same events, seq numbers
    and end position. Batch boundaries may differ by a transaction: a fresh peek counts the relation
    announcements it sends again towards its limit. Returns (batches, read-ahead peeks, the ops)."""
    with make_source(url, tables=TABLES) as ahead, plain_source(url) as plain:
        ahead.read_ahead(10 * batch_size)
        peeks = counted_peeks(ahead)
        cut, cut_positions = drain(ahead, start, batch_size, **kwargs)
        peeked, peeked_positions = drain(plain, start, batch_size, **kwargs)
    assert cut == peeked
    assert cut_positions[-1] == peeked_positions[-1]
    return len(cut_positions) - 1, len(peeks), [event["op"] for event in cut]


def test_batches_cut_from_one_peek_are_the_batches_of_a_peek_each(backlog):
    url, start = backlog
    batches, peeks, ops = side_by_side(url, start, batch_size=10)
    assert batches >= 12 + 1200 // 10  # the huge transaction in windows of 10
    assert batches >= 3 * peeks, f"{peeks} peeks for {batches} batches"
    # What the backlog holds reached the batches: a schema change, creates, updates, the key update as a delete
    # and a create, the truncate.
    assert {"s", "c", "u", "d", "t"} <= set(ops)


def test_a_slot_acknowledged_part_way_into_the_read_ahead_reads_the_same(backlog):
    url, start = backlog
    batches, peeks, _ = side_by_side(url, start, batch_size=10, acknowledge_every=2)
    assert batches >= 12 and batches >= 2 * peeks, f"{peeks} peeks for {batches} batches"


def test_a_replay_from_before_the_read_ahead_reads_the_same(backlog):
    url, start = backlog
    batches, peeks, _ = side_by_side(url, start, batch_size=10, replay_after=14)
    assert peeks >= 3  # the replay, from before the second read-ahead began, peeked again


def test_without_read_ahead_each_batch_peeks(backlog):
    url, start = backlog
    with make_source(url, tables=TABLES) as source:
        peeks = counted_peeks(source)
        position, batches, windows = start, 0, 0
        while not (batch := source.capture(position, 10)).is_empty:
            # The huge transaction's windows are read by a query of their own (the last one starts inside it).
            windows += bool(position.get("partial") or batch.position_to.get("partial"))
            position, batches = batch.position_to, batches + 1
    assert windows >= 1200 // 10
    assert len(peeks) >= batches - windows + 1  # one a batch at least (reaching a window peeks too)
