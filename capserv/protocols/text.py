"""
The uppercasing codec: bytes in, uppercase bytes out, one chunk at a time.

TCP delivers a byte stream in arbitrary pieces, so a multi-byte character can
arrive split across two reads.  `Uppercaser` keeps such a partial character
until the rest of it arrives (it is never mangled), passes bytes that are not
valid in the encoding through unchanged (``surrogateescape``: nothing a client
sends is lost or replaced), and flushes a trailing partial character
unchanged at end of input.

Two fast paths keep the common case cheap:

    - ASCII mode (``ascii_only=True``) maps only ``a``-``z`` with
      `bytes.upper`; every other byte is left alone and the length never
      changes.
    - In Unicode mode, a chunk of pure ASCII with nothing pending is
      uppercased with `bytes.upper` too, with no decode/encode round trip,
      as long as the encoding maps ASCII bytes to ASCII characters one to one
      (UTF-8, Latin-1, the cp125x family...).
"""

from __future__ import annotations

import codecs
import re
from functools import cache

__all__ = ["Uppercaser", "is_ascii_compatible", "lookup_encoding", "service_encoding", "uppercase"]

#: The codec error handler: Python's ``surrogateescape``, widened to every
#: byte.  ``surrogateescape`` turns an undecodable byte 0x80-0xFF into
#: U+DC80-U+DCFF and back, but refuses bytes below 0x80, which wide codecs
#: (UTF-16, UTF-32) can find undecodable (a lone surrogate ``\x00\xd8``), and
#: those codecs will not encode an escape back to a single byte.  This
#: handler escapes any byte b as U+DC00+b (decoding), and `_encode_upper`
#: turns escapes back into their bytes itself where the codec will not, so
#: whatever a client sends comes back in any encoding, and the result does
#: not depend on where the stream was cut.  In UTF-8 it gives exactly what
#: ``surrogateescape`` gives (invalid UTF-8 bytes are all 0x80 or above).
#: (Both found by fuzz/fuzz_codec.py.)
_ERRORS = "capserv-escape"
#: Python's own handler, in C: it costs what valid text costs, where
#: ``capserv-escape`` calls back into Python once per run of bad bytes
#: (about 50x slower on random bytes).  It gives the same result wherever
#: every undecodable byte is 0x80 or above and comes alone or in a run the
#: decoder reports as such: UTF-8 and the stateless one-byte codecs
#: (`_c_errors_suffice`).
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
    Resolve a codec name to its canonical Python name.

    :param name: any name Python's `codecs` registry knows (``"utf8"``,
        ``"latin-1"``, ``"cp1252"``...).
    :return: the canonical name, e.g. ``"utf-8"``.
    :raises LookupError: if ``name`` is not a text encoding Python knows, so
        configuration can report the culprit instead of failing per packet.
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
    Resolve the encoding a service is configured with: a text encoding in
    which ASCII letters are themselves (UTF-8, Latin-1, the cp125x and
    ISO-8859 families, Shift JIS...), so that the ASCII text most clients
    send is uppercased.

    `Uppercaser` takes wider codecs too (UTF-16, UTF-32): fed text in them,
    it uppercases it; but a service configured with one would read the
    ASCII its clients send as other characters and send it back unchanged.

    :return: the canonical name, e.g. ``"utf-8"``.
    :raises LookupError: naming why the codec is refused and what to write.
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
    """
    Tell whether every ASCII byte stands for the same ASCII character alone.

    When it does, a chunk of pure ASCII bytes means the same text in this
    encoding as in ASCII, so `bytes.upper` gives the right answer without
    decoding.  Stateful encodings (UTF-7, ISO-2022) and wide ones (UTF-16,
    UTF-32) fail the test and always take the full path.
    """
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
    """The error handler `Uppercaser` decodes and encodes ``encoding`` with."""
    return _C_ERRORS if _c_errors_suffice(encoding) else _ERRORS


def _c_errors_suffice(encoding: str) -> bool:
    """
    Tell whether ``surrogateescape`` gives what ``capserv-escape`` gives:
    UTF-8 (whose invalid bytes are all 0x80 or above), and codecs that are
    ASCII-compatible and read each byte alone (Latin-1, the cp125x and
    ISO-8859 families), so an undecodable byte is always one byte of 0x80 or
    above.  Multi-byte codecs (Shift JIS, GBK) may call a following ASCII byte
    part of a bad sequence, which ``surrogateescape`` refuses.
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
    """
    Uppercase one complete message (a datagram, a whole input).

    The same rules as `Uppercaser`, for input that has no continuation.
    """
    if ascii_only:
        return data.upper()
    codec = Uppercaser(encoding)
    return codec.feed(data) + codec.flush()


class Uppercaser:
    """
    An incremental uppercaser for a byte stream.

    Feed it chunks with `feed` as they arrive and call `flush` at end of
    input.  The concatenated output is exactly what uppercasing the whole
    input at once gives, however the input was cut.
    """

    __slots__ = ("_decoder", "_encoder", "_fast", "_pending", "ascii_only", "encoding")

    def __init__(self, encoding: str = "utf-8", ascii_only: bool = False) -> None:
        """
        :param encoding: the name of a Python text codec; UTF-8 by default.
        :param ascii_only: map only ``a``-``z`` and leave every other byte
            alone, whatever the encoding.
        """
        self.encoding = lookup_encoding(encoding)
        self.ascii_only = ascii_only
        self._fast = ascii_only or is_ascii_compatible(self.encoding)
        # Made on first use: most connections only ever see ASCII, and an
        # idle connection should cost as little memory as possible.
        self._decoder: codecs.IncrementalDecoder | None = None
        # Incremental too, so a codec that writes a byte-order mark (UTF-16,
        # UTF-32) writes it once per stream, not once per chunk.
        self._encoder: codecs.IncrementalEncoder | None = None
        # True while the decoder may hold bytes of an incomplete character.
        self._pending = False

    @property
    def pending(self) -> bytes:
        """
        The bytes held back: the start of a character not yet complete.
        """
        if not self._pending or self._decoder is None:
            return b""
        state = self._decoder.getstate()
        return state[0] if isinstance(state[0], bytes) else b""

    def feed(self, data: bytes) -> bytes:
        """
        Uppercase the next chunk of the stream.

        :return: the uppercase bytes for every character completed by
            ``data``; a partial character at its end is held back.
        """
        if self.ascii_only or (self._fast and not self._pending and data.isascii()):
            return data.upper()
        return self._slow(data, False)

    def flush(self) -> bytes:
        """
        End the stream: return whatever is still held, unchanged if it is a
        partial character, and reset for a new stream.
        """
        if self.ascii_only or not self._pending:
            self._reset()
            return b""
        return self._slow(b"", True)

    def _reset(self) -> None:
        """Forget the stream so far: a new stream starts with the next byte."""
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
            # A codec that fails beyond what an error handler can mend (the
            # UTF-16 decoder given one byte and end of input: "does not start
            # with BOM"): pass the raw bytes through rather than lose them,
            # and start afresh.
            self._reset()
            return before + data
        state = decoder.getstate()
        self._pending = bool(state[0]) or bool(state[1])
        assert self._encoder is not None
        try:
            out = _encode_upper(text, self._encoder)
        except UnicodeError:
            # Decoded to something the codec cannot encode again (ISO-2022
            # escape sequences, say): the raw bytes, as above.
            self._reset()
            return before + data
        if final:
            self._reset()
        return out


def _encode_upper(text: str, encoder: codecs.IncrementalEncoder) -> bytes:
    """
    Encode ``text.upper()``, keeping any character whose capital the
    encoding cannot represent (Latin-1 has ``"ÿ"`` but not ``"Ÿ"``), and
    turning escaped bytes back into themselves.
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
