"""
The uppercasing codec: bytes in, uppercase bytes out, one chunk at a time.

A multi-byte character split across reads is held until complete; bytes
invalid in the encoding pass through unchanged; pure ASCII takes
`bytes.upper` without decoding where the encoding allows it.
"""

from __future__ import annotations

import codecs
import re
from functools import cache

__all__ = ["Uppercaser", "is_ascii_compatible", "lookup_encoding", "service_encoding", "uppercase"]

#: ``surrogateescape`` widened to every byte (wide codecs find bytes below
#: 0x80 undecodable too), so whatever a client sends comes back in any
#: encoding, however the stream was cut.
_ERRORS = "capserv-escape"
#: Python's handler, in C and much faster; the same result where every bad
#: byte is 0x80 or above (`_c_errors_suffice`).
_C_ERRORS = "surrogateescape"
_ESCAPES = re.compile("([\udc00-\udcff]+)")


def _unescape(escapes: str) -> bytes:
    """The bytes that a run of U+DC00-U+DCFF escapes stands for."""
    return bytes(ord(ch) - 0xDC00 for ch in escapes)


def _escape(error: UnicodeError) -> tuple[str | bytes, int]:
    if isinstance(error, UnicodeDecodeError):
        bad = error.object[error.start : error.end]
        return "".join(chr(0xDC00 + b) for b in bad), error.end
    if isinstance(error, UnicodeEncodeError):
        text = error.object[error.start : error.end]
        if _ESCAPES.fullmatch(text):
            return _unescape(text), error.end
    raise error


codecs.register_error(_ERRORS, _escape)


def lookup_encoding(name: str) -> str:
    """
    The canonical Python name of a text codec (``"utf8"`` -> ``"utf-8"``).

    :raises LookupError: naming the culprit, if it is not a text encoding.
    """
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise LookupError(f"unknown text encoding {name!r}; write {_WRITE_INSTEAD}") from None
    if not getattr(info, "_is_text_encoding", True):
        raise LookupError(
            f"{name!r} is a Python codec but not a text encoding (it transforms bytes or text); write {_WRITE_INSTEAD}"
        )
    return info.name


#: The encodings to suggest when one is refused.
_WRITE_INSTEAD = "an ASCII-compatible text encoding such as utf-8, latin-1 or cp1252"


def service_encoding(name: str) -> str:
    """
    `lookup_encoding`, for a service: only encodings that write ASCII letters
    as themselves, or the ASCII most clients send would come back unchanged.
    """
    canonical = lookup_encoding(name)
    try:
        ascii_letters = "Az".encode(canonical) == b"Az" and b"Az".decode(canonical) == "Az"
    except (UnicodeError, LookupError):
        ascii_letters = False
    if not ascii_letters:
        raise LookupError(
            f"{name!r} does not write ASCII letters as themselves, so ASCII text sent in it would come back "
            f"unchanged; write {_WRITE_INSTEAD}"
        )
    if uppercase(b"Az", canonical) != b"AZ":
        # idna: the codec lowercases what it encodes (nameprep).
        raise LookupError(f"{name!r} cannot write capitals (it lowercases what it encodes); write {_WRITE_INSTEAD}")
    return canonical


@cache
def is_ascii_compatible(encoding: str) -> bool:
    """Whether every ASCII byte stands alone for its ASCII character (so `bytes.upper` is right)."""
    for i in range(128):
        b = bytes([i])
        try:
            if b.decode(encoding) != chr(i) or chr(i).encode(encoding) != b:
                return False
        except UnicodeError:
            return False
    return True


@cache
def _errors_for(encoding: str) -> str:
    return _C_ERRORS if _c_errors_suffice(encoding) else _ERRORS


def _c_errors_suffice(encoding: str) -> bool:
    """
    Whether ``surrogateescape`` gives what ``capserv-escape`` gives: UTF-8,
    and ASCII-compatible codecs that read each byte alone.
    """
    if encoding == "utf-8":
        return True
    if not is_ascii_compatible(encoding):
        return False
    for i in range(128, 256):
        decoder = codecs.getincrementaldecoder(encoding)("strict")
        try:
            if len(decoder.decode(bytes([i]), False)) != 1:
                return False
        except UnicodeDecodeError:
            continue
    return True


def uppercase(data: bytes, encoding: str = "utf-8", ascii_only: bool = False) -> bytes:
    """Uppercase one complete message (a datagram, a whole input) by `Uppercaser`'s rules."""
    if ascii_only:
        return data.upper()
    codec = Uppercaser(encoding)
    return codec.feed(data) + codec.flush()


class Uppercaser:
    """
    An incremental uppercaser: `feed` chunks, `flush` at end of input; the
    output is what uppercasing the whole input at once gives.
    """

    __slots__ = ("_decoder", "_encoder", "_fast", "_pending", "ascii_only", "encoding")

    def __init__(self, encoding: str = "utf-8", ascii_only: bool = False) -> None:
        """:param ascii_only: map only ``a``-``z``, whatever the encoding."""
        self.encoding = lookup_encoding(encoding)
        self.ascii_only = ascii_only
        self._fast = ascii_only or is_ascii_compatible(self.encoding)
        # Made on first use: most connections only ever see ASCII.
        self._decoder: codecs.IncrementalDecoder | None = None
        # Incremental, so a byte-order mark is written once per stream.
        self._encoder: codecs.IncrementalEncoder | None = None
        # True while the decoder may hold bytes of an incomplete character.
        self._pending = False

    @property
    def pending(self) -> bytes:
        """The bytes held back: the start of a character not yet complete."""
        if not self._pending or self._decoder is None:
            return b""
        state = self._decoder.getstate()
        return state[0] if isinstance(state[0], bytes) else b""

    def feed(self, data: bytes) -> bytes:
        """Uppercase the characters ``data`` completes; hold back a partial one at its end."""
        if self.ascii_only or (self._fast and not self._pending and data.isascii()):
            return data.upper()
        return self._slow(data, False)

    def flush(self) -> bytes:
        """End the stream: return what is held (a partial character unchanged) and reset."""
        if self.ascii_only or not self._pending:
            self._reset()
            return b""
        return self._slow(b"", True)

    def _reset(self) -> None:
        if self._decoder is not None:
            self._decoder.reset()
            self._encoder.reset()  # type: ignore[union-attr]
        self._pending = False

    def _slow(self, data: bytes, final: bool) -> bytes:
        decoder = self._decoder
        if decoder is None:
            errors = _errors_for(self.encoding)
            decoder = self._decoder = codecs.getincrementaldecoder(self.encoding)(errors)
            self._encoder = codecs.getincrementalencoder(self.encoding)(errors)
        before = self.pending
        try:
            text = decoder.decode(data, final)
        except UnicodeError:
            # Beyond what an error handler mends (UTF-16 given one byte at
            # the end): pass the raw bytes through and start afresh.
            self._reset()
            return before + data
        state = decoder.getstate()
        self._pending = bool(state[0]) or bool(state[1])
        assert self._encoder is not None
        try:
            out = _encode_upper(text, self._encoder)
        except UnicodeError:
            # Cannot be encoded again (ISO-2022 escapes): the raw bytes too.
            self._reset()
            return before + data
        if final:
            self._reset()
        return out


def _encode_upper(text: str, encoder: codecs.IncrementalEncoder) -> bytes:
    """
    Encode ``text.upper()``, keeping characters whose capital the encoding
    lacks (Latin-1 ``"ÿ"``) and turning escapes back into their bytes.
    """
    try:
        return encoder.encode(text.upper())
    except UnicodeEncodeError:
        pass
    out = []
    for piece in _ESCAPES.split(text):
        if not piece:
            continue
        if _ESCAPES.fullmatch(piece):
            out.append(_unescape(piece))
            continue
        try:
            out.append(encoder.encode(piece.upper()))
        except UnicodeEncodeError:
            for ch in piece:
                try:
                    out.append(encoder.encode(ch.upper()))
                except UnicodeEncodeError:
                    out.append(encoder.encode(ch))
    return b"".join(out)
