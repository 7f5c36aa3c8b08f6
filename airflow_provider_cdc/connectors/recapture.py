"""When a batch captured again from an older position may still be applied from the sink's high water on.

Two captures from one stored position overlap: a run whose task was cleared, a manual run beside the continuous one,
or the run after a crash between the load and the commit. Every sink applies such a batch *from its high water on*:
the changes up to there are taken as the ones an earlier batch applied (DESIGN section 3, exactly-once protocol).

That holds for changes read from the source's log: a source numbers them by their order after the position, so a
later capture from the same position is the earlier one plus more, change for change. It does not hold for a
**snapshot page**. A capture with a snapshot pending reads the log first, then as many rows of the pending tables as
the batch has room for, numbered after however many log changes it happened to read; the rows are read as they are
*now*, and the page ends wherever its rows end. A later capture from the same position reads a longer log part, so
its numbers below the high water are other changes (log changes nobody applied, lost if skipped), and its page holds
other rows (rows deleted meanwhile move the page's end, and a skipped page leaves the rows between the two ends
unread). Renumbering cannot repair this: the content of a page depends on when it is read, not on the position.

So a batch that reads a snapshot page (or that was captured while a snapshot was pending: its numbering already
depends on the moment) is valid only on top of exactly what its position says the sink holds: if the sink's ledger
went past its start, it is **stale**. It is refused whole, nothing of it written and its position not stored; the
next run captures from the committed position, which no other batch has passed. Log-only batches keep being
applied from the high water on, as before.

Two captures that read the same numbers can still end their pages at different keys (rows deleted in the page's
range meanwhile): their ids would be the same, so a sink would take the second for the first (a no-op) and commit
would store its position, past rows nobody read. The id of a batch that read a page therefore ends with
:func:`page_tag`, a digest of where the snapshot stands after it; captures that end at the same key share it, and
either one is then right (the log brings every change made after the page was read).

No Airflow here: the pipeline checks this before a load, and a sink can check it inside its own transaction (where
the high water it reads cannot move under it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import pyarrow.compute as pc

from airflow_provider_cdc.events import OP_READ, ChangeBatch


def reads_snapshot(batch: ChangeBatch) -> bool:
    """Whether ``batch`` was captured while a snapshot was pending, or read snapshot rows (op ``r``).

    Every source records a pending snapshot as ``snapshot`` in its position (:mod:`.table_tracking`), also one
    queued by a change in the log (a truncate or a rename read mid-batch); the ``r`` rows catch a snapshot that
    started and ended within the batch."""
    if batch.position_from.get("snapshot") or batch.position_to.get("snapshot"):
        return True
    return any(table.num_rows and "_cdc_op" in table.column_names and
               pc.any(pc.equal(table["_cdc_op"], OP_READ)).as_py() for table in batch.tables.values())


def is_stale(batch: ChangeBatch, high_water: int) -> bool:
    """Whether ``batch`` (not in the ledger: the caller checked) must be refused rather than applied from
    ``high_water`` on: it reads a snapshot and the sink committed past its start."""
    return batch.seq_from <= high_water and reads_snapshot(batch)


def stale_reason(batch: ChangeBatch, high_water: int) -> str:
    """Why a stale batch is refused, and what happens next (for logs and the load summary)."""
    return (f"batch {batch.batch_id} (seq {batch.seq_from}-{batch.seq_to}) was captured while a snapshot was pending, "
            f"and the sink already committed up to seq {high_water} from another capture of that range: its snapshot "
            "rows and numbering hold only on top of the position it started from. Nothing of it is applied and its "
            "position is not stored; the next run captures from the committed position")


def page_tag(position_to: Mapping[str, Any]) -> str:
    """A short digest of the snapshot's progress after a batch (tables pending, last key read; ``done`` when the
    snapshot is), for the id of a batch that read a snapshot page (see the module docstring)."""
    progress = position_to.get("snapshot")
    if not progress:
        return "done"
    return hashlib.sha256(json.dumps(progress, sort_keys=True, default=str).encode()).hexdigest()[:10]
