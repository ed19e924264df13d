"""
The uppercasing codec, one chunk at a time: a character split across reads
is held until complete, bytes invalid in the encoding pass through unchanged,
and pure ASCII takes `bytes.upper` where the encoding allows it.
"""

from __future__ import annotations

import codecs
import re
from functools import cache

__all__ = ["Uppercaser", "is_ascii_compatible", "lookup_encoding", "service_encoding", "uppercase"]

#: ``surrogateescape`` widened to bytes below 0x80 (which wide codecs find
#: undecodable too), so whatever a client sends comes back in any encoding.
_ERRORS = "capserv-escape"
#: Python's handler, in C and much faster, where it gives the same (`_errors_for`).
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
    """The canonical name of a text codec (``"utf8"`` -> ``"utf-8"``); `LookupError` names any other."""
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
    """`lookup_encoding` of an encoding writing ASCII letters as themselves (else ASCII comes back unchanged)."""
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
    try:
        return all(bytes([i]).decode(encoding) == chr(i) and chr(i).encode(encoding) == bytes([i]) for i in range(128))
    except UnicodeError:
        return False


@cache
def _errors_for(encoding: str) -> str:
    """
    ``surrogateescape`` where it gives what ``capserv-escape`` gives (UTF-8,
    and ASCII-compatible codecs reading each byte alone), else ours.
    """
    if encoding == "utf-8":
        return _C_ERRORS
    if not is_ascii_compatible(encoding):
        return _ERRORS
    for i in range(128, 256):
        try:
            if len(codecs.getincrementaldecoder(encoding)("strict").decode(bytes([i]), False)) != 1:
                return _ERRORS
        except UnicodeDecodeError:
            continue
    return _C_ERRORS


def uppercase(data: bytes, encoding: str = "utf-8", ascii_only: bool = False) -> bytes:
    """Uppercase one complete message (a datagram, a whole input) by `Uppercaser`'s rules."""
    if ascii_only:
        return data.upper()
    codec = Uppercaser(encoding)
    return codec.feed(data) + codec.flush()


class Uppercaser:
    """An incremental uppercaser: `feed` chunks, `flush` at the end; the output is the whole input's."""

    __slots__ = ("_decoder", "_encoder", "_fast", "_pending", "ascii_only", "encoding")

    def __init__(self, encoding: str = "utf-8", ascii_only: bool = False) -> None:
        """:param ascii_only: map only ``a``-``z``, whatever the encoding."""
        self.encoding = lookup_encoding(encoding)
        self.ascii_only = ascii_only
        self._fast = ascii_only or is_ascii_compatible(self.encoding)
        # Made on first use (most connections only ever see ASCII); incremental, so a BOM is written once.
        self._decoder: codecs.IncrementalDecoder | None = None
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
            state = decoder.getstate()
            out = _encode_upper(text, self._encoder)  # type: ignore[arg-type]
        except UnicodeError:
            # Beyond what an error handler mends (UTF-16 cut at an odd byte, ISO-2022 escapes): raw bytes, afresh.
            self._reset()
            return before + data
        self._pending = bool(state[0]) or bool(state[1])
        if final:
            self._reset()
        return out


def _encode_upper(text: str, encoder: codecs.IncrementalEncoder) -> bytes:
    """Encode ``text.upper()``, keeping characters whose capital the encoding lacks (Latin-1 ``"ÿ"``)."""
    try:
        return encoder.encode(text.upper())
    except UnicodeEncodeError:
        pass
    out = []
    for piece in filter(None, _ESCAPES.split(text)):
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
