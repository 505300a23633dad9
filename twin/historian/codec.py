"""The IngestService's messages <-> the historian's values, shared by its servicer and its client: samples,
quarantined samples and quarantine reasons, each converted in one place."""

from __future__ import annotations

from typing import Any

import numpy as np

from alutwin.codec import timestamp_of_unix_s
from alutwin.v1 import ingest_pb2
from twin.historian.historian import Quarantined, QuarantineReason, Sample

__all__ = [
    "INGEST_SERVICE",
    "REASON_FROM_PB",
    "REASON_TO_PB",
    "quarantined_from_pb",
    "quarantined_to_pb",
    "sample_from_pb",
    "sample_to_pb",
]

INGEST_SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
"""``"alutwin.v1.IngestService"``."""

REASON_TO_PB: dict[QuarantineReason, ingest_pb2.QuarantineReason] = {
    QuarantineReason.NON_FINITE: ingest_pb2.QUARANTINE_REASON_NON_FINITE,
    QuarantineReason.OUT_OF_BOUNDS: ingest_pb2.QUARANTINE_REASON_OUT_OF_BOUNDS,
    QuarantineReason.OUT_OF_ORDER: ingest_pb2.QUARANTINE_REASON_OUT_OF_ORDER,
    QuarantineReason.DUPLICATE: ingest_pb2.QUARANTINE_REASON_DUPLICATE,
    QuarantineReason.BAD_SHAPE: ingest_pb2.QUARANTINE_REASON_BAD_SHAPE,
    QuarantineReason.BAD_INDEX: ingest_pb2.QUARANTINE_REASON_BAD_INDEX,
}
"""Each quarantine reason's ``alutwin.v1.QuarantineReason``."""
REASON_FROM_PB: dict[int, QuarantineReason] = {v: k for k, v in REASON_TO_PB.items()}
"""The quarantine reason of each ``alutwin.v1.QuarantineReason`` number."""


def _floats(a: Any) -> list[float]:
    return np.asarray(a, dtype=np.float64).reshape(-1).tolist()


def sample_to_pb(sample: Sample) -> ingest_pb2.Sample:
    """The message of a :class:`Sample` (``x`` and ``u`` flattened, as sent)."""
    return ingest_pb2.Sample(
        cell=int(sample.cell),
        step=int(sample.step),
        time_s=float(sample.time_s),
        x=_floats(sample.x),
        u=_floats(sample.u),
    )


def sample_from_pb(msg: ingest_pb2.Sample) -> Sample:
    """The :class:`Sample` of a message (``x`` and ``u`` as sent; the historian checks their shapes)."""
    return Sample(
        cell=msg.cell,
        step=msg.step,
        time_s=msg.time_s,
        x=np.array(msg.x, dtype=np.float64),
        u=np.array(msg.u, dtype=np.float64),
    )


def quarantined_to_pb(q: Quarantined) -> ingest_pb2.QuarantinedSample:
    """The message of a :class:`Quarantined` sample."""
    msg = ingest_pb2.QuarantinedSample(
        index=q.index or 0,
        time_s=q.time_s,
        x=_floats(q.x),
        u=_floats(q.u),
        reason=REASON_TO_PB[q.reason],
        detail=q.detail,
        received_at_unix_s=q.received_at,
        received_at=timestamp_of_unix_s(q.received_at),
    )
    if q.cell is not None:
        msg.cell = q.cell
    if q.step is not None:
        msg.step = q.step
    return msg


def quarantined_from_pb(msg: ingest_pb2.QuarantinedSample, with_index: bool = True) -> Quarantined:
    """The :class:`Quarantined` sample of a message (``index`` kept when ``with_index``)."""
    return Quarantined(
        cell=msg.cell if msg.HasField("cell") else None,
        step=msg.step if msg.HasField("step") else None,
        time_s=msg.time_s,
        x=np.array(msg.x, dtype=np.float64),
        u=np.array(msg.u, dtype=np.float64),
        reason=REASON_FROM_PB.get(msg.reason, QuarantineReason.BAD_SHAPE),
        detail=msg.detail,
        received_at=msg.received_at_unix_s or msg.received_at.ToNanoseconds() / 1e9,  # the float64 one is exact
        index=msg.index if with_index else None,
    )
