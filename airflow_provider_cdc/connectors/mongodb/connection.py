"""Connections to MongoDB: one client setup for the source, the sink and the probe.

Dates decode as aware UTC datetimes, and dates outside what Python's datetime holds as ``DatetimeMS`` (never an
error while reading); every other BSON type decodes as pymongo's own classes (``ObjectId``, ``Decimal128``,
``Int64``, ``Binary``), which :mod:`.documents` maps to the value contract.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bson.codec_options import CodecOptions, DatetimeConversion
from pymongo import MongoClient
from pymongo.uri_parser import parse_uri

MONGODB_DIALECT = "mongodb"
APP_NAME = "airflow-provider-cdc"
CODEC_OPTIONS: CodecOptions = CodecOptions(tz_aware=True, tzinfo=dt.timezone.utc,
                                           datetime_conversion=DatetimeConversion.DATETIME_AUTO)
# Keys an Airflow Connection's extras carry for MongoHook itself, not for the driver.
_HOOK_ONLY_EXTRAS = {"srv", "allow_insecure"}


class BadMongoUrl(ValueError):
    """A connection URL that is not a ``mongodb://`` URL."""


def connect(url: str, **kwargs: Any) -> MongoClient:
    """A client for ``url`` (``mongodb://`` or ``mongodb+srv://``), with the connector's codec options."""
    if not url.startswith(("mongodb://", "mongodb+srv://")):
        raise BadMongoUrl("not a MongoDB URL (expected mongodb://user:password@host:port/database)")
    kwargs.setdefault("serverSelectionTimeoutMS", 10_000)
    kwargs.setdefault("appname", APP_NAME)
    return MongoClient(url, tz_aware=True, tzinfo=dt.timezone.utc,
                       datetime_conversion=DatetimeConversion.DATETIME_AUTO, **kwargs)


def source_client(url: str, source_id: str) -> MongoClient:
    """A client for a source or its probe; a URL the driver refuses is a SourceError (the URL is never shown)."""
    from pymongo.errors import PyMongoError

    from airflow_provider_cdc.errors import SourceError

    try:
        return connect(url)
    except (PyMongoError, ValueError) as exc:
        raise SourceError(source_id, f"cannot connect: {exc}") from exc


def database_of(url: str) -> str:
    """The database named in the URL's path ("" when none)."""
    try:
        return parse_uri(url, validate=False, warn=True).get("database") or ""
    except Exception:  # a malformed URL fails later, with the driver's own message
        return urlsplit(url).path.lstrip("/")


def normalize_uri(uri: str) -> str:
    """A driver URL from ``MongoHook``'s URI plus its Connection's extras: the hook's own keys (``srv``,
    ``allow_insecure``) go, ``allow_insecure=true`` becomes ``tlsAllowInvalidCertificates=true``."""
    parts = urlsplit(uri)
    if parts.scheme not in ("mongodb", "mongodb+srv"):
        return uri
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    insecure = any(k == "allow_insecure" and v.lower() == "true" for k, v in pairs)
    kept = [(k, v) for k, v in pairs if k not in _HOOK_ONLY_EXTRAS]
    if insecure and not any(k == "tlsAllowInvalidCertificates" for k, _ in kept):
        kept.append(("tlsAllowInvalidCertificates", "true"))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(kept), parts.fragment))
