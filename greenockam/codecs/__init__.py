"""Payload codecs: how a message body becomes the payload bytes of a TransportMessage.

The package has three layers, each importing only the ones below it:

* :mod:`~greenockam.codecs.primitives`: the BARE ``uint`` and bincode lengths, shared with the
  frame codec (:mod:`greenockam.wire`), which sits beside the payload codecs on top of them;
* :mod:`~greenockam.codecs.typed`: message types declared as dataclasses, with fixed-width
  integers, lists, maps, enums and the rest of serde's data model (docs/typed-messages.md); it
  encodes a BARE ``Route`` with :func:`~greenockam.codecs.primitives.encode_route`, as the frame
  codec does;
* :mod:`~greenockam.codecs.payload`: :class:`Codec`, the ``bare`` and ``bincode`` codecs a node
  and its contexts use.
"""

from __future__ import annotations

from .payload import BARE, BINCODE, CODECS, RAW, UNIT, Codec, get_codec
from .typed import (
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    I128,
    U8,
    U16,
    U32,
    U64,
    U128,
    Char,
    Fixed,
    TaggedUnion,
)

__all__ = [
    "Codec",
    "BARE",
    "BINCODE",
    "RAW",
    "UNIT",
    "get_codec",
    "CODECS",
    "U8",
    "U16",
    "U32",
    "U64",
    "U128",
    "I8",
    "I16",
    "I32",
    "I64",
    "I128",
    "F32",
    "F64",
    "Char",
    "Fixed",
    "TaggedUnion",
]
