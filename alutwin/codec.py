"""The numpy <-> protobuf codec every alutwin server and client shares: ``DoubleArray`` messages, and the wire
bytes of the large Predict messages written and read straight from numpy arrays.

Predict requests and responses carry large arrays. Filling a DoubleArray and serialising the message copies each
array three times (tobytes, into the message, into the wire bytes), and parsing it twice more; the functions here
go straight between numpy and the wire format of PredictRequest and PredictResponse instead (one copy each way).
The bytes are an ordinary message: any protobuf parser reads them, and bytes this fast path does not expect
(legal, but not how this codec writes them) are left to protobuf.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from alutwin.v1 import common_pb2, twin_pb2

__all__ = [
    "decode_array",
    "iso_of_timestamp",
    "timestamp_of_iso",
    "timestamp_of_ms",
    "timestamp_of_unix_s",
    "encode_array",
    "parse_predict_request",
    "serialize_predict_request",
    "serialize_predict_response",
    "signal_to_pb",
    "split_predict_response",
]

_MAX_AXIS = 1 << 40


def timestamp_of_iso(text: str) -> Timestamp | None:
    """The Timestamp of an ISO 8601 time (``2026-01-31T12:00:00+00:00``; no offset means UTC); ``None`` for
    "" or text that is not such a time (old files may hold anything: an absent Timestamp says "unknown")."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    ts = Timestamp()
    ts.FromDatetime(when.astimezone(timezone.utc))
    return ts


def iso_of_timestamp(ts: Timestamp) -> str:
    """ISO 8601 UTC text of a Timestamp, to the second as the registry records times (``...+00:00``)."""
    return ts.ToDatetime(tzinfo=timezone.utc).isoformat(timespec="seconds")


def timestamp_of_ms(ms: int) -> Timestamp:
    """The Timestamp of a time in ms since the Unix epoch."""
    ts = Timestamp()
    ts.FromMilliseconds(int(ms))
    return ts


def timestamp_of_unix_s(seconds: float) -> Timestamp:
    """The Timestamp of a time in s since the Unix epoch (to the nanosecond a float64 holds)."""
    ts = Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def signal_to_pb(signal: Any) -> common_pb2.Signal:
    """The ``Signal`` message of a named signal (anything with ``index``, ``name``, ``unit``, ``description``,
    ``low`` and ``high``, such as :class:`plant.signals.Signal`)."""
    return common_pb2.Signal(
        index=signal.index,
        name=signal.name,
        unit=signal.unit,
        description=signal.description,
        typical=common_pb2.Range(low=signal.low, high=signal.high),
    )


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


# Wire tag of DoubleArray.values: field 2, wire type 2 (length-delimited). A packed repeated double is
# encoded as the little-endian doubles back to back, so merging the tag, the length and the raw bytes fills
# `values` at memcpy speed (filling it from Python floats one by one is far slower).
_VALUES_TAG = bytes([(2 << 3) | 2])


def encode_array(
    array: np.ndarray, encoding: int = twin_pb2.ARRAY_ENCODING_RAW, out: twin_pb2.DoubleArray | None = None
) -> twin_pb2.DoubleArray:
    """A :class:`DoubleArray` message of ``array`` (converted to float64), packed, raw or raw float32.

    Parameters
    ----------
    array : array_like
        Any shape.
    encoding : ArrayEncoding
        ``ARRAY_ENCODING_RAW`` (default), ``ARRAY_ENCODING_RAW_F32`` (rounded to float32) or
        ``ARRAY_ENCODING_PACKED`` (``UNSPECIFIED`` means packed).
    out : DoubleArray, optional
        An empty message to fill (e.g. a field of a response) instead of a new one.
    """
    a = np.ascontiguousarray(array, dtype="<f8")
    msg = twin_pb2.DoubleArray() if out is None else out
    msg.shape.extend(a.shape)
    if encoding == twin_pb2.ARRAY_ENCODING_RAW_F32:
        msg.raw_f32 = a.astype("<f4").tobytes()
        return msg
    data = a.tobytes()
    if encoding == twin_pb2.ARRAY_ENCODING_RAW:
        msg.raw = data
    elif data:
        msg.MergeFromString(_VALUES_TAG + _varint(len(data)) + data)
    return msg


def decode_array(msg: twin_pb2.DoubleArray, name: str, ndim: int | None = None) -> np.ndarray:
    """The float64 array of a :class:`DoubleArray` message (read-only when sent raw).

    Raises
    ------
    ValueError
        The shape has the wrong number of axes, or the data do not match it (the message names ``name``).
    """
    shape = tuple(int(d) for d in msg.shape)
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{name}.shape must have {ndim} axes, got {list(shape)}")
    if any(d > _MAX_AXIS for d in shape):
        raise ValueError(f"{name}.shape {list(shape)} is too large")
    size = math.prod(shape)
    n_values, n_raw, n_f32 = len(msg.values), len(msg.raw), len(msg.raw_f32)
    if (n_values > 0) + (n_raw > 0) + (n_f32 > 0) > 1:
        raise ValueError(f"{name} holds more than one of values, raw and raw_f32; send one of them")
    if n_raw:
        if n_raw != 8 * size:
            raise ValueError(f"{name}.raw holds {n_raw} bytes; shape {list(shape)} needs {8 * size} (float64)")
        return np.frombuffer(msg.raw, dtype="<f8").reshape(shape)
    if n_f32:
        if n_f32 != 4 * size:
            raise ValueError(f"{name}.raw_f32 holds {n_f32} bytes; shape {list(shape)} needs {4 * size} (float32)")
        return np.frombuffer(msg.raw_f32, dtype="<f4").astype(np.float64).reshape(shape)
    if n_values != size:
        raise ValueError(f"{name}.values holds {n_values} numbers; shape {list(shape)} needs {size}")
    return np.array(msg.values, dtype=np.float64).reshape(shape)


_RESPONSE_FIELDS = twin_pb2.PredictResponse.DESCRIPTOR.fields_by_name
_ARRAY_FIELDS = {name: (_RESPONSE_FIELDS[name].number, ndim) for name, ndim in
                 (("mean", 3), ("spread", 3), ("outputs", 3), ("members", 4))}  # fmt: skip
_RESPONSE_BY_NUMBER = {number: (name, ndim) for name, (number, ndim) in _ARRAY_FIELDS.items()}
_REQUEST_FIELDS = twin_pb2.PredictRequest.DESCRIPTOR.fields_by_name
_REQUEST_ARRAYS = {name: (_REQUEST_FIELDS[name].number, ndim) for name, ndim in (("x0", 2), ("u", 3))}
_REQUEST_BY_NUMBER = {number: (name, ndim) for name, (number, ndim) in _REQUEST_ARRAYS.items()}
_SHAPE, _VALUES, _RAW, _RAW_F32 = (
    twin_pb2.DoubleArray.DESCRIPTOR.fields_by_name[n].number for n in ("shape", "values", "raw", "raw_f32")
)
_ITEM_BYTES = {_VALUES: 8, _RAW: 8, _RAW_F32: 4}
_DATA_FIELD = {_VALUES: "values", _RAW: "raw", _RAW_F32: "raw_f32"}
_LEN = 2  # wire type of length-delimited fields


def _key(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _array_parts(number: int, array: np.ndarray, encoding: int) -> list[bytes | memoryview]:
    """Wire bytes of DoubleArray field ``number`` holding ``array`` (copied once, by the final join)."""
    if encoding == twin_pb2.ARRAY_ENCODING_RAW_F32:
        a, data_key = np.ascontiguousarray(array, dtype="<f4"), _key(_RAW_F32, _LEN)
    else:
        a = np.ascontiguousarray(array, dtype="<f8")
        data_key = _key(_RAW if encoding == twin_pb2.ARRAY_ENCODING_RAW else _VALUES, _LEN)
    dims = b"".join(_varint(d) for d in a.shape)
    body: list[bytes | memoryview] = [_key(_SHAPE, _LEN) + _varint(len(dims)) + dims]
    if a.size:
        body += [data_key + _varint(a.nbytes), a.data.cast("B")]
    return [_key(number, _LEN) + _varint(sum(len(b) for b in body)), *body]


def serialize_predict_response(
    header: twin_pb2.PredictResponse, arrays: Mapping[str, np.ndarray], encoding: int = twin_pb2.ARRAY_ENCODING_RAW
) -> bytes:
    """The wire bytes of a PredictResponse: ``header`` (every field but the arrays) plus ``arrays`` (``mean``,
    ``spread``, ``outputs``, ``members``) as DoubleArray fields, packed, raw or raw float32."""
    parts: list[bytes | memoryview] = [header.SerializeToString()]
    for name, array in arrays.items():
        parts += _array_parts(_ARRAY_FIELDS[name][0], array, encoding)
    return b"".join(parts)


def serialize_predict_request(
    header: twin_pb2.PredictRequest, x0: np.ndarray, u: np.ndarray, encoding: int = twin_pb2.ARRAY_ENCODING_RAW
) -> bytes:
    """The wire bytes of a PredictRequest: ``header`` (every field but ``x0`` and ``u``) plus the two arrays."""
    parts: list[bytes | memoryview] = [header.SerializeToString()]
    parts += _array_parts(_REQUEST_ARRAYS["x0"][0], x0, encoding)
    parts += _array_parts(_REQUEST_ARRAYS["u"][0], u, encoding)
    return b"".join(parts)


class _Irregular(Exception):
    """Wire bytes that the fast parser leaves to protobuf (legal, but not how this codec writes them)."""


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 64:
        if pos >= len(buf):
            raise _Irregular
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _Irregular


def _read_array(buf: memoryview, data: bytes, start: int, end: int, name: str, ndim: int) -> np.ndarray:
    """A DoubleArray sub-message in ``buf[start:end]``: a read-only view of ``data`` (no copy) for float64, a
    widened copy for float32."""
    shape: list[int] = []
    span: tuple[int, int, int] | None = None
    pos = start
    while pos < end:
        key, pos = _read_varint(buf, pos)
        if key >> 3 == _SHAPE and key & 7 == _LEN:
            length, pos = _read_varint(buf, pos)
            stop = pos + length
            while pos < stop:
                d, pos = _read_varint(buf, pos)
                shape.append(d)
        elif key >> 3 in _ITEM_BYTES and key & 7 == _LEN and span is None:
            length, pos = _read_varint(buf, pos)
            span = (pos, length, key >> 3)
            pos += length
        else:
            raise _Irregular
    if pos != end:
        raise _Irregular
    if len(shape) != ndim or any(d > _MAX_AXIS for d in shape):
        raise ValueError(f"{name}.shape must have {ndim} axes, got {shape}")
    offset, length, field = span or (0, 0, _RAW)
    item, size = _ITEM_BYTES[field], math.prod(shape)
    if length != item * size:
        kind = "float64" if item == 8 else "float32"
        raise ValueError(
            f"{name}.{_DATA_FIELD[field]} holds {length} bytes; shape {shape} needs {item * size} ({kind})"
        )
    if item == 4:
        return np.frombuffer(data, dtype="<f4", count=size, offset=offset).astype(np.float64).reshape(shape)
    return np.frombuffer(data, dtype="<f8", count=size, offset=offset).reshape(shape)


def _split_message(data: bytes, arrays: Mapping[int, tuple[str, int]]) -> tuple[bytes, dict[str, np.ndarray]]:
    """The array fields ``arrays`` (field number -> (name, axes)) of a message's wire bytes, decoded, and the
    bytes of every other field; :class:`_Irregular` where the bytes are not as this codec writes them."""
    buf = memoryview(data)
    others: list[memoryview] = []
    found: dict[str, np.ndarray] = {}
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _read_varint(buf, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == _LEN:
            length, pos = _read_varint(buf, pos)
            if number in arrays:
                name, ndim = arrays[number]
                if name in found or pos + length > len(buf):
                    raise _Irregular
                found[name] = _read_array(buf, data, pos, pos + length, name, ndim)
                pos += length
                continue
            pos += length
        else:
            raise _Irregular
        others.append(buf[start:pos])
    if pos != len(buf):
        raise _Irregular
    return b"".join(others), found


def _split_parsed(message: Message, arrays: Mapping[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """What :func:`_split_message` does, for a message protobuf parsed (the slow path): the array fields
    ``arrays`` (name -> (field number, axes)) that ``message`` holds, decoded, then cleared from it."""
    found = {
        name: decode_array(getattr(message, name), name, ndim)
        for name, (_, ndim) in arrays.items()
        if message.HasField(name)
    }
    for name in found:
        message.ClearField(name)
    return found


def split_predict_response(data: bytes) -> tuple[twin_pb2.PredictResponse, dict[str, np.ndarray]]:
    """``(response without its arrays, arrays by field name)`` from the wire bytes of a PredictResponse; float64
    arrays are read-only views of ``data`` (no copy). Absent array fields are absent from the dict."""
    try:
        rest, arrays = _split_message(data, _RESPONSE_BY_NUMBER)
    except _Irregular:
        full = twin_pb2.PredictResponse.FromString(data)
        return full, _split_parsed(full, _ARRAY_FIELDS)
    return twin_pb2.PredictResponse.FromString(rest), arrays


def parse_predict_request(data: bytes) -> tuple[twin_pb2.PredictRequest, np.ndarray, np.ndarray]:
    """``(request without its arrays, x0, u)`` from the wire bytes of a PredictRequest (float64 arrays are
    read-only views of ``data``).

    Raises
    ------
    ValueError
        Arrays of the wrong number of axes, or whose data do not match their shape (the message names them);
        bytes that are not a PredictRequest at all (protobuf's DecodeError is a ValueError too).
    """
    try:
        rest, arrays = _split_message(data, _REQUEST_BY_NUMBER)
        header = twin_pb2.PredictRequest.FromString(rest)
    except _Irregular:
        header = twin_pb2.PredictRequest.FromString(data)
        arrays = _split_parsed(header, _REQUEST_ARRAYS)
    for name, (_, ndim) in _REQUEST_ARRAYS.items():
        if name not in arrays:
            arrays[name] = decode_array(twin_pb2.DoubleArray(), name, ndim)  # absent: shape () -> axes error
    return header, arrays["x0"], arrays["u"]
