"""PostgreSQL connector: :class:`~.source.PgSource` (logical decoding with pgoutput), :class:`~.sink.PgSink` (bulk
merge), :class:`~.probe.PgChangeProbe` (the triggerer's async check) and the factory the registry loads
(:mod:`.factory`). Modules import lazily: importing this package does not import the sink or the probe."""

from __future__ import annotations
