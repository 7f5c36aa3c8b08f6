"""The ``options:`` of a MySQL or MariaDB source in ``cdc.yaml``.

Validated by ``config check`` with file, key and reason like every other key (``extra="forbid"``: a typo is an
error, not a silently ignored setting).
"""

from __future__ import annotations

import zlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Replica server ids we pick by default: far from the small ids servers are usually given.
_SERVER_ID_BASE = 1_000_000_000
_SERVER_ID_SPAN = 1_000_000_000


class MySqlSourceOptions(BaseModel):
    """How the binlog is read.

    - ``server_id``: the replica id the binlog reader registers with (every reader of one server needs its own;
      default: derived from the source id).
    - ``position_mode``: ``file`` resumes from a binlog file and offset (any server with a binlog); ``gtid`` resumes
      from the GTIDs executed (MariaDB ``domain-server-seq`` or MySQL ``uuid:1-42``), which survives a failover to
      a replica that has the same GTIDs. Both are stored in the position either way.
    - ``zero_dates``: what a MySQL zero date (``0000-00-00``, ``2024-00-10``) becomes; ``null`` (with a warning
      naming table, column and count) or ``refuse`` (the capture stops, naming the row).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    server_id: int | None = Field(default=None, ge=1, le=4_294_967_295)
    position_mode: Literal["file", "gtid"] = "file"
    zero_dates: Literal["null", "refuse"] = "null"

    def effective_server_id(self, source_id: str) -> int:
        return self.server_id or _SERVER_ID_BASE + zlib.crc32(source_id.encode()) % _SERVER_ID_SPAN
