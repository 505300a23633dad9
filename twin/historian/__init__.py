"""Measurements: the crash-safe historian, its IngestService and client, and the plant-to-twin bridge.

The historian is an interface (``historian``: samples, windows, quarantine), the checks of a sample on its own
(``samples``: shapes, bounds, domain) and the stores behind it: SQLite (``sqlite``, the default) or a PostgreSQL
server (``postgres``)."""

from twin.historian.bridge import (
    Backoff,
    BridgeConfig,
    BridgeError,
    BridgeStats,
    measurement_to_sample,
    run_bridge,
)
from twin.historian.codec import (
    INGEST_SERVICE,
    REASON_FROM_PB,
    REASON_TO_PB,
    quarantined_from_pb,
    quarantined_to_pb,
    sample_from_pb,
    sample_to_pb,
)
from twin.historian.historian import (
    AppendResult,
    Historian,
    HistorianClosed,
    HistorianError,
    Quarantined,
    QuarantineReason,
    Sample,
    Window,
)
from twin.historian.ingest import DEFAULT_QUARANTINE_LIST, IngestServicer
from twin.historian.ingest_client import CellHistory, HistorianInfo, IngestAck, IngestClient, IngestStream, StreamEnded
from twin.historian.postgres import PostgresHistorian, is_postgres_url, open_historian
from twin.historian.samples import DEFAULT_BOUNDS, MAX_INDEX, SampleBounds, check_sample
from twin.historian.sqlite import SCHEMA_VERSION, SQLiteHistorian

__all__ = [
    "AppendResult",
    "Backoff",
    "BridgeConfig",
    "BridgeError",
    "BridgeStats",
    "CellHistory",
    "DEFAULT_BOUNDS",
    "DEFAULT_QUARANTINE_LIST",
    "Historian",
    "HistorianClosed",
    "HistorianError",
    "HistorianInfo",
    "INGEST_SERVICE",
    "IngestAck",
    "IngestClient",
    "IngestServicer",
    "IngestStream",
    "MAX_INDEX",
    "PostgresHistorian",
    "QuarantineReason",
    "Quarantined",
    "REASON_FROM_PB",
    "REASON_TO_PB",
    "SCHEMA_VERSION",
    "SQLiteHistorian",
    "Sample",
    "SampleBounds",
    "StreamEnded",
    "Window",
    "check_sample",
    "is_postgres_url",
    "measurement_to_sample",
    "open_historian",
    "quarantined_from_pb",
    "quarantined_to_pb",
    "run_bridge",
    "sample_from_pb",
    "sample_to_pb",
]
