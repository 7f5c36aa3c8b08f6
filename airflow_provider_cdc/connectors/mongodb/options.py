"""The ``options:`` of a MongoDB source in ``cdc.yaml``.

Validated by ``config check`` with file, key and reason like every other key (``extra="forbid"``: a typo is an
error, not a silently ignored setting).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MongoSourceOptions(BaseModel):
    """How the change stream is read.

    - ``full_document``: the document an update event carries. ``updateLookup`` (default) reads the current
      document when the event is read; ``whenAvailable`` and ``required`` use the post-image a collection keeps
      with ``changeStreamPreAndPostImages`` enabled (``required`` stops when one is missing). An update that
      carries no document (it was deleted since) keeps the fields it did not change (the sink keeps their values).
    - ``before_images``: ``whenAvailable`` (default) asks for the pre-image of updates and deletes where the
      collection keeps them, which gives the before-image; ``off`` does not ask.
    - ``idle_wait_ms``: how long one capture waits for new events on a quiet stream before it returns the stream's
      post-batch resume token as the position (so an idle source's position still advances).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    full_document: Literal["updateLookup", "whenAvailable", "required"] = "updateLookup"
    before_images: Literal["whenAvailable", "off"] = "whenAvailable"
    idle_wait_ms: int = Field(default=200, ge=0, le=60_000)
