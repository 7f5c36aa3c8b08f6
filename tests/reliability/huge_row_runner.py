"""Runs a source's pending changes through capture -> stage -> load -> commit in this child process and prints its
peak memory (used by test_huge_rows.py, which measures one process per run so that the peak is this run's alone).

    python huge_row_runner.py SOURCE_TYPE SOURCE_URL SINK_URL STAGING_URL TABLE SOURCE_ID

Positions live in a JSON file under the staging root, so that consecutive runs (a snapshot, then the stream)
continue where the last one stopped. Prints one JSON line: ``{"baseline_kb", "peak_kb", "changes"}``; the baseline is
the peak after imports and connections, before anything was captured.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.config import ConnectorConfig, SourceConfig
from airflow_provider_cdc.connectors.registry import make_sink, make_source
from airflow_provider_cdc.staging import BatchStore


class FilePositions:
    """The PositionStore protocol in a JSON file (no Airflow metadata DB in the child)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _all(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, source_id: str) -> dict[str, Any] | None:
        doc = self._all().get(source_id)
        return None if doc is None else {k: v for k, v in doc.items() if k != "batch_id"}

    def set(self, source_id: str, position: dict[str, Any], *, batch_id: str | None) -> None:
        docs = self._all()
        docs[source_id] = {**position, "batch_id": batch_id}
        self.path.write_text(json.dumps(docs))

    def delete(self, source_id: str) -> None:
        docs = self._all()
        docs.pop(source_id, None)
        self.path.write_text(json.dumps(docs))


def peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux


def main(source_type: str, source_url: str, sink_url: str, staging_url: str, table: str, source_id: str) -> None:
    config = SourceConfig(id=source_id, type=source_type, connection_string=source_url, tables=[table],
                          sink="warehouse", batch_size=1000)
    source = make_source(config, source_url)
    sink = make_sink(ConnectorConfig(id="warehouse", type="postgresql", connection_string=sink_url), sink_url, config)
    store = BatchStore(staging_url)
    positions = FilePositions(Path(staging_url.removeprefix("file://")) / "positions.json")
    changes = 0
    try:
        source.prepare(positions.get(source_id))
        baseline = peak_kb()
        for _ in range(10):
            captured = pipeline.capture_stage(source, sink, positions, store, max_changes=config.batch_size)
            loaded = pipeline.load_stage(captured["manifest_uri"], sink)
            pipeline.commit_stage(captured["manifest_uri"], source, sink, positions, store,
                                  newly_held=loaded["newly_held"])
            changes += captured["change_count"]
            if captured["change_count"] == 0 and "snapshot" not in (positions.get(source_id) or {}):
                break
    finally:
        source.close()
        sink.close()
    print(json.dumps({"baseline_kb": baseline, "peak_kb": peak_kb(), "changes": changes}))


if __name__ == "__main__":
    main(*sys.argv[1:7])
