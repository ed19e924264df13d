"""
Tests for `capserv.protocols.text`: the incremental uppercasing codec.
"""

from __future__ import annotations

import codecs
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from capserv.protocols import text
from capserv.protocols.text import Uppercaser, is_ascii_compatible, lookup_encoding, service_encoding, uppercase

from ..support.contract import reference


def feed_all(codec: Uppercaser, chunks: list[bytes]) -> bytes:
    return b"".join(codec.feed(c) for c in chunks) + codec.flush()


@st.composite
def chunked(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> tuple[bytes, list[bytes]]:
    """Some bytes and one way of cutting them into chunks."""
    whole = draw(data)
    cuts = sorted(draw(st.lists(st.integers(0, len(whole)), max_size=12)))
    bounds = [0, *cuts, len(whole)]
    return whole, [whole[a:b] for a, b in itertools.pairwise(bounds)]


# Arbitrary bytes, and bytes that are mostly valid UTF-8 text with some noise,
# so both the invalid-byte and the split-character paths are exercised often.
_noisy_text = st.lists(
    st.one_of(st.text().map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=4)),
    max_size=8,
).map(b"".join)


class PropertyTests(SynchronousTestCase):
    """
    However the input is cut, the stream gives the whole input's answer.
    """

    @settings(max_examples=400, deadline=None)
    @given(chunked(st.one_of(st.binary(), _noisy_text)))
    def test_chunks_equal_whole(self, case: tuple[bytes, list[bytes]]) -> None:
        """
        Any bytes (random, or text with invalid bytes mixed in), cut into any chunks,
        give exactly the uppercase of the whole input by the reference rules: how the
        stream is cut never changes the answer.
        """
        whole, chunks = case
        self.assertEqual(feed_all(Uppercaser(), chunks), reference(whole))

    @settings(max_examples=200, deadline=None)
    @given(chunked(st.binary()), st.sampled_from(["latin-1", "cp1252", "utf-8", "shift_jis"]))
    def test_other_encodings(self, case: tuple[bytes, list[bytes]], encoding: str) -> None:
        """
        In Latin-1, cp1252, UTF-8 and Shift JIS too, any bytes cut any way give the same
        answer as the whole input fed at once; for UTF-8 that answer is the reference's.
        """
        whole, chunks = case
        out = feed_all(Uppercaser(encoding), chunks)
        self.assertEqual(out, feed_all(Uppercaser(encoding), [whole]))
        if encoding == "utf-8":
            self.assertEqual(out, reference(whole))

    @settings(max_examples=200, deadline=None)
    @given(st.binary())
    def test_ascii_mode_maps_only_a_to_z(self, data: bytes) -> None:
        """
        In ASCII mode exactly the bytes a-z become A-Z; every other byte, and the
        length, stay the same.
        """
        out = feed_all(Uppercaser(ascii_only=True), [data[:3], data[3:]])
        self.assertEqual(len(out), len(data))
        for before, after in zip(data, out, strict=False):
            expected = before - 32 if 0x61 <= before <= 0x7A else before
            self.assertEqual(after, expected)

    @settings(max_examples=200, deadline=None)
    @given(st.binary())
    def test_nothing_is_lost(self, data: bytes) -> None:
        """Invalid bytes come back unchanged: lowering the reply gives the
        input's own lowering, byte for byte where the input was not text."""
        out = uppercase(data)
        self.assertEqual(out.decode("utf-8", "surrogateescape"), data.decode("utf-8", "surrogateescape").upper())


class ExampleTests(SynchronousTestCase):
    """
    The spec's examples and the edges of the stream.
    """

    def test_full_case_mapping(self) -> None:
        """
        Python's full case mapping is used: "straße" becomes "STRASSE", the digraph "ǆ"
        becomes "Ǆ", and "ΐ" becomes three code points.
        """
        self.assertEqual(uppercase("straße".encode()), b"STRASSE")
        self.assertEqual(uppercase("ǆ".encode()), "Ǆ".encode())
        self.assertEqual(uppercase("ΐ".encode()).decode(), "\u0399\u0308\u0301")

    def test_split_character_held(self) -> None:
        """
        A multi-byte character split across reads is held back until it is complete,
        then sent whole; nothing is left pending after it.
        """
        codec = Uppercaser()
        euro = "€".encode()
        self.assertEqual(codec.feed(b"a" + euro[:1]), b"A")
        self.assertEqual(codec.pending, euro[:1])
        self.assertEqual(codec.feed(euro[1:2]), b"")
        self.assertEqual(codec.feed(euro[2:] + b"b"), euro + b"B")
        self.assertEqual(codec.flush(), b"")

    def test_partial_character_flushed_unchanged(self) -> None:
        """
        A partial character left at the end of input is flushed unchanged, and the codec
        is ready for a new stream afterwards.
        """
        codec = Uppercaser()
        self.assertEqual(codec.feed(b"x\xe2\x82"), b"X")
        self.assertEqual(codec.flush(), b"\xe2\x82")
        # The codec is ready for a new stream afterwards.
        self.assertEqual(codec.feed(b"y"), b"Y")

    def test_invalid_bytes_pass_through(self) -> None:
        """
        Bytes that are not valid UTF-8 pass through unchanged while the valid text
        around them is uppercased.
        """
        self.assertEqual(uppercase(b"caf\xe9 \xff\xfe ok"), b"CAF\xe9 \xff\xfe OK")

    def test_ascii_fast_path_skips_decoder(self) -> None:
        """A pure-ASCII chunk with nothing pending never reaches the decoder."""
        codec = Uppercaser()
        self.assertIsNone(codec._decoder, "the decoder is made only when needed")

        class Boom:
            def decode(self, data: bytes, final: bool = False) -> str:
                raise AssertionError("decoder used for ASCII")

        codec._decoder = Boom()  # type: ignore[assignment]
        self.assertEqual(codec.feed(b"hello, world\n"), b"HELLO, WORLD\n")

    def test_ascii_after_pending_takes_slow_path(self) -> None:
        """
        An ASCII chunk that follows a pending partial character does not take the ASCII
        fast path: the pending byte is emitted before it, in order.
        """
        codec = Uppercaser()
        codec.feed(b"\xc3")
        self.assertEqual(codec.feed(b"a"), b"\xc3A")

    def test_ascii_mode_leaves_unicode_alone(self) -> None:
        """
        ASCII mode leaves non-ASCII characters (ß, é) as they are, byte for byte.
        """
        data = "straße é".encode()
        self.assertEqual(Uppercaser(ascii_only=True).feed(data), b"STRA\xc3\x9fE \xc3\xa9")

    def test_capital_not_in_encoding_kept(self) -> None:
        """Latin-1 has ÿ and µ but not their capitals: they stay."""
        data = "ÿµé".encode("latin-1")
        self.assertEqual(uppercase(data, "latin-1"), "ÿµÉ".encode("latin-1"))

    def test_wide_encoding(self) -> None:
        """
        UTF-16-LE text cut in the middle of a code unit is uppercased correctly.
        """
        data = "abc€".encode("utf-16-le")
        codec = Uppercaser("utf-16-le")
        out = codec.feed(data[:3]) + codec.feed(data[3:]) + codec.flush()
        self.assertEqual(out, "ABC€".encode("utf-16-le"))

    def test_wide_encoding_undecodable_passes_through(self) -> None:
        """A lone UTF-16 surrogate cannot be decoded; its bytes come back where they were."""
        data = b"a\x00\x00\xd8b\x00"
        self.assertEqual(uppercase(data, "utf-16-le"), b"A\x00\x00\xd8B\x00")

    # Found by fuzz/fuzz_codec.py; each used to raise or to depend on the cuts.

    def test_wide_encoding_trailing_odd_byte_flushed(self) -> None:
        """
        In UTF-16-LE a trailing odd byte is held, then flushed unchanged at the end,
        never raised.
        """
        codec = Uppercaser("utf-16-le")
        self.assertEqual(codec.feed(b"\xff" * 8 + b"h"), b"\xff" * 8)
        self.assertEqual(codec.flush(), b"h")

    def test_wide_encoding_invalid_units_do_not_depend_on_cuts(self) -> None:
        """
        Invalid UTF-16-LE units (a lone surrogate) give the same output wherever the
        input is cut, and pass through unchanged.
        """
        data = b"q\x00\x7f\xdc\x00\x00\x01\x00MQQQ\xff\xda\x80@"
        whole = uppercase(data, "utf-16-le")
        for cut in range(len(data) + 1):
            codec = Uppercaser("utf-16-le")
            self.assertEqual(codec.feed(data[:cut]) + codec.feed(data[cut:]) + codec.flush(), whole, cut)
        self.assertEqual(whole[:4], b"Q\x00\x7f\xdc")

    def test_byte_order_mark_once_per_stream(self) -> None:
        """
        With the UTF-16 codec the byte-order mark is written once, at the start of the
        reply, not once per chunk.
        """
        codec = Uppercaser("utf-16")
        out = codec.feed("ab".encode("utf-16")) + codec.feed("cd".encode("utf-16-le")) + codec.flush()
        self.assertEqual(out, "ABCD".encode("utf-16"))

    def test_stateful_codecs_never_raise(self) -> None:
        """
        Stateful codecs (UTF-16, UTF-32, UTF-7, ISO-2022-JP) given the inputs that once
        made them raise return bytes, in pieces and whole.
        """
        samples = [
            ("utf-16", b"\x00"),
            ("utf-16", b"\x00\x03\x04"),
            ("utf-32", b"\x00\x00\x01"),
            ("utf-7", b"+AGE-+\xff"),
            ("iso2022_jp", b"\xff" * 4 + b"\x1b" * 50 + b"\xeb\xff\x83\x00\xd8\xd8\xd8\x01s\xd8\x03\x000\xa4"),
        ]
        for encoding, data in samples:
            codec = Uppercaser(encoding)
            out = codec.feed(data[:1]) + codec.feed(data[1:]) + codec.flush()
            self.assertIsInstance(out, bytes)
            self.assertIsInstance(uppercase(data, encoding), bytes)

    def test_ascii_compatibility(self) -> None:
        """
        UTF-8 and Latin-1 count as ASCII-compatible (eligible for the fast path);
        UTF-16-LE and UTF-7 do not.
        """
        self.assertTrue(is_ascii_compatible("utf-8"))
        self.assertTrue(is_ascii_compatible("latin-1"))
        self.assertFalse(is_ascii_compatible("utf-16-le"))
        self.assertFalse(is_ascii_compatible("utf-7"))

    def test_lookup_encoding(self) -> None:
        """
        Encoding names are normalised ("UTF8" is "utf-8"); unknown codecs and non-text
        codecs (rot13) raise LookupError.
        """
        self.assertEqual(lookup_encoding("UTF8"), "utf-8")
        self.assertRaises(LookupError, lookup_encoding, "no-such-codec")
        self.assertRaises(LookupError, lookup_encoding, "rot13")

    def test_service_encoding_takes_only_ascii_compatible_codecs(self) -> None:
        """
        A service's encoding must write ASCII letters as themselves (else ASCII
        text comes back unchanged); the error says why and what to write.
        """
        for name in ("utf-8", "latin-1", "cp1252", "shift_jis", "utf-7"):
            self.assertEqual(service_encoding(name), lookup_encoding(name))
        for name, why in [
            ("rot13", "not a text encoding"),
            ("utf-16", "does not write ASCII letters as themselves"),
            ("utf-32-le", "does not write ASCII letters as themselves"),
            ("undefined", "does not write ASCII letters as themselves"),
            ("punycode", "does not write ASCII letters as themselves"),
            ("idna", "cannot write capitals"),
            ("no-such-codec", "unknown text encoding"),
        ]:
            with self.assertRaises(LookupError, msg=name) as caught:
                service_encoding(name)
            self.assertIn(f"{name!r}", str(caught.exception))
            self.assertIn(why, str(caught.exception))
            self.assertIn(
                "write an ASCII-compatible text encoding such as utf-8, latin-1 or cp1252", str(caught.exception)
            )


#: The inputs that once cost 40-130x what text costs (issue 18): each is
#: uppercased by the reference rules, whole and at every split point.
_SLOW_INPUTS = {
    "random bytes": bytes(range(256)) + bytes((i * 97 + 13) % 256 for i in range(256)),
    "Latin-1 text": "Grüße aus Köln, ça va très bien, µ ÿ ß".encode("latin-1"),
    "a run of 0xff": b"\xff" * 64,
    "lone continuation bytes": b"\x80\xbf" * 16 + b"a\x80",
    "truncated sequences": b"\xe2\x82a\xf0\x9f\x98b\xc3",
    "surrogates encoded as UTF-8": "\ud800\udfff".encode("utf-8", "surrogatepass") + b"x",
}


class SlowInputTests(SynchronousTestCase):
    """
    The inputs that are not UTF-8 keep the contract on the fast handler.
    """

    def test_every_split_point_gives_the_reference(self) -> None:
        """
        Each input cut at every point (and fed one byte at a time) gives the
        reference answer: invalid bytes unchanged, split characters joined.
        """
        for name, data in _SLOW_INPUTS.items():
            expected = reference(data)
            for cut in range(len(data) + 1):
                with self.subTest(name=name, cut=cut):
                    self.assertEqual(feed_all(Uppercaser(), [data[:cut], data[cut:]]), expected)
            self.assertEqual(feed_all(Uppercaser(), [data[i : i + 1] for i in range(len(data))]), expected)
            self.assertEqual(uppercase(data), expected)

    def test_utf8_never_calls_back_into_python(self) -> None:
        """
        In UTF-8, bad bytes are escaped by Python's own C handler: capserv's
        Python error handler (one call per run of bad bytes, the cost that
        made random bytes 50x slower than text) is never called.
        """
        calls = []
        original = text._escape

        def counting(error: UnicodeError) -> tuple[str | bytes, int]:
            calls.append(error)
            return original(error)

        self.patch(text, "_escape", counting)
        codecs.register_error(text._ERRORS, counting)
        self.addCleanup(codecs.register_error, text._ERRORS, original)
        for data in _SLOW_INPUTS.values():
            feed_all(Uppercaser(), [data[:7], data[7:]])
        self.assertEqual(calls, [])
        # The check can fail: a wide codec still takes the Python handler.
        feed_all(Uppercaser("utf-16-le"), [b"\x00\xd8"])
        self.assertNotEqual(calls, [])

    @settings(max_examples=200, deadline=None)
    @given(chunked(st.binary()), st.sampled_from(["latin-1", "cp1252", "iso8859-7", "koi8-r", "cp437"]))
    def test_one_byte_codecs_agree_with_capserv_escape(self, case: tuple[bytes, list[bytes]], encoding: str) -> None:
        """
        For the one-byte codecs that take Python's C handler, the answer is
        exactly what capserv's own escape handler gives, however the input is cut.
        """
        _whole, chunks = case
        self.assertEqual(text._errors_for(codecs.lookup(encoding).name), "surrogateescape")
        fast = feed_all(Uppercaser(encoding), chunks)
        slow = Uppercaser(encoding)
        slow._decoder = codecs.getincrementaldecoder(encoding)(text._ERRORS)
        slow._encoder = codecs.getincrementalencoder(encoding)(text._ERRORS)
        self.assertEqual(fast, feed_all(slow, chunks))
