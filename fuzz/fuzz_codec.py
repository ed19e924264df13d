"""
A coverage-guided fuzz target for capserv's codec (capserv/text.py), for
atheris (libFuzzer for Python).

Each input picks an encoding, a way to cut the bytes into chunks, and the
bytes.  The target checks the codec's promises:

- no input makes it raise, in any of the encodings tried;
- however the input is cut (stateless encodings), feeding the chunks to `Uppercaser` and flushing
  gives what uppercasing the whole input at once gives;
- in UTF-8 that is the contract's reference, decode/upper/encode with
  ``surrogateescape``: no byte a client sends is lost or replaced;
- uppercasing the answer again changes nothing (the loop guard's premise);
- ``--ascii`` mode is ``bytes.upper``: same length, only a-z changed.

Run for a bounded time (tox -e fuzz runs it for 60 seconds)::

    python fuzz/fuzz_codec.py -max_total_time=60 NEW_CORPUS_DIR fuzz/seeds

A failure prints the input and writes it to ``crash-*``; turn it into a
test in tests/unit/test_text.py.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["capserv"]):
    from capserv.protocols.text import Uppercaser, uppercase

#: UTF-8 (the default), single-byte codecs, a multi-byte one, wide ones.
STATELESS = ["utf-8", "latin-1", "cp1252", "shift_jis", "utf-16-le", "utf-32-le"]
#: Codecs with state across the stream (a byte-order mark to find first,
#: shift sequences): capserv must not fail on any input, but an undecodable
#: chunk passes through raw, so the answer may depend on the cuts.
STATEFUL = ["utf-16", "utf-32", "utf-7", "iso2022_jp"]
ENCODINGS = STATELESS + STATEFUL


def reference(data: bytes) -> bytes:
    return data.decode("utf-8", "surrogateescape").upper().encode("utf-8", "surrogateescape")


def incremental(data: bytes, cuts: list[int], encoding: str, ascii_only: bool = False) -> bytes:
    codec = Uppercaser(encoding, ascii_only)
    out = []
    last = 0
    for cut in sorted(set(cuts)):
        out.append(codec.feed(data[last:cut]))
        last = cut
    out.append(codec.feed(data[last:]))
    out.append(codec.flush())
    return b"".join(out)


def test_one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    encoding = ENCODINGS[fdp.ConsumeIntInRange(0, len(ENCODINGS) - 1)]
    ncuts = fdp.ConsumeIntInRange(0, 8)
    cuts = [fdp.ConsumeIntInRange(0, 4096) for _ in range(ncuts)]
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    cuts = [c for c in cuts if c <= len(data)]

    whole = uppercase(data, encoding)
    pieces = incremental(data, cuts, encoding)
    if encoding in STATEFUL:
        return
    if pieces != whole:
        raise AssertionError(f"{encoding}: cut at {cuts}: {pieces!r} != {whole!r}")
    if encoding == "utf-8":
        if whole != reference(data):
            raise AssertionError(f"not the reference: {whole!r}")
        if uppercase(whole) != whole:
            raise AssertionError(f"not idempotent: {whole!r}")
    ascii_mode = incremental(data, cuts, encoding, ascii_only=True)
    if ascii_mode != data.upper() or len(ascii_mode) != len(data):
        raise AssertionError(f"ascii mode: {ascii_mode!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
