"""The fuzz targets, one module each; what several share is below."""

from __future__ import annotations

from consensus.encoding import _careful_decode


def check_as_careful(cls: type, data: bytes, decoded: object) -> None:
    """``decoded``, what decode_record accepted from ``data``, is what the field-by-field
    decoder makes of it (DecodeError escapes otherwise). That a record re-encodes to its
    bytes does not show it: a check the whole-buffer decoder and encoder share would let
    a value past its limit through both."""
    if _careful_decode(cls, data) != decoded:
        raise AssertionError(f"{cls.__name__}: the two decoders disagree")
