"""Kapacitor's UDF protocol on the wire: each protobuf message preceded by its length as a
varint, on the UDF process's stdin and stdout (`federation/kapacitor/udf.proto`), and points
to and from its messages."""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Final, Protocol

import numpy as np
from google.protobuf.message import Message

from federation.core.points import FieldValue, Point
from federation.errors import InvalidInput
from federation.kapacitor import _udf_pb2 as pb

MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
"""The longest message accepted; a longer length prefix means the stream is out of step."""


class ProtocolError(InvalidInput):
    """The byte stream on stdin, or a message in it, breaks Kapacitor's UDF protocol."""


class ByteSource(Protocol):
    """What messages are read from: a binary stream whose `read(n)` may return fewer bytes."""

    def read(self, n: int, /) -> bytes: ...


def encode_varint(value: int) -> bytes:
    """The unsigned base-128 varint of `value` (protobuf's encoding); ValueError if negative."""
    if value < 0:
        raise ValueError(f"a varint is unsigned, got {value}")
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def frame(message: Message | bytes) -> bytes:
    """One message as it goes on the wire: its length as a varint, then its bytes."""
    body = message if isinstance(message, bytes) else message.SerializeToString()
    return encode_varint(len(body)) + body


def _read_exact(source: ByteSource, length: int) -> bytes:
    chunks: list[bytes] = []
    remaining = length
    while remaining:
        chunk = source.read(remaining)
        if not chunk:
            raise ProtocolError(
                f"stdin ended after {length - remaining} of the {length} bytes of a message"
            )
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(source: ByteSource) -> bytes | None:
    """The bytes of the next message; None when the stream ends cleanly between messages.

    Reads may return any number of bytes: the function keeps reading until the message is
    whole. A stream that ends inside a message, or a length prefix that is malformed or longer
    than `MAX_MESSAGE_BYTES`, raises ProtocolError.
    """
    length = 0
    shift = 0
    while True:
        byte = source.read(1)
        if not byte:
            if shift == 0:
                return None
            raise ProtocolError("stdin ended inside the length prefix of a message")
        length |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            break
        shift += 7
        if shift >= 64:
            raise ProtocolError("a message length prefix is longer than 10 bytes")
    if length > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            f"a message claims {length} bytes, more than the limit of {MAX_MESSAGE_BYTES}"
        )
    return _read_exact(source, length)


def iter_frames(source: ByteSource) -> Iterator[bytes]:
    """Every message of the stream in order, until it ends cleanly (ProtocolError otherwise)."""
    while (data := read_frame(source)) is not None:
        yield data


def point_response(point: Point) -> pb.Response:
    """A federation Point as a Response point, every field in the map of its type.

    Integers go to `fieldsInt` (so counts stay integer fields), floats to `fieldsDouble`,
    strings to `fieldsString`. Database and retention policy stay empty: influxDBOut sets them.
    TypeError for a boolean field, which the protocol's points cannot carry.
    """
    response = pb.Response()
    message = response.point
    message.name = point.measurement
    message.time = point.time_ns
    message.tags.update(point.tags)
    for key, value in point.fields.items():
        if isinstance(value, bool | np.bool_):
            raise TypeError(f"field {key!r} is boolean; UDF points carry no boolean fields")
        if isinstance(value, numbers.Integral):
            message.fieldsInt[key] = int(value)
        elif isinstance(value, numbers.Real):
            message.fieldsDouble[key] = float(value)
        elif isinstance(value, str):
            message.fieldsString[key] = value
        else:
            raise TypeError(f"field {key!r} has unsupported type {type(value).__name__}")
    return response


def point_from_message(message: pb.Point) -> Point:
    """The federation Point a UDF point message carries (typed fields kept as their types)."""
    fields: dict[str, FieldValue] = {}
    fields.update(message.fieldsInt)
    fields.update(message.fieldsDouble)
    fields.update(message.fieldsString)
    return Point(message.name, dict(message.tags), fields, message.time)
