"""Token ids in, text out as soon as it is final: the one detokenizer of every streaming path.

Used by the engine (every server row) and by `tinystories sample` when it streams, and by
`complete` to cut a finished story at its stop strings, so all of them write the same text.

Two things keep text back until it is final:

* an unfinished UTF-8 character: a byte-level BPE token can hold half of one, and decoding
  it alone gives U+FFFD. Decoding uses a short window, not the whole row (TGI's scheme:
  the text of ``ids[prefix:read]`` is already known; decode ``ids[prefix:]`` and keep what
  is new), so a token costs O(1), not O(length);
* the possible start of a stop string ("The e" while "The end" is a stop string).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[list[int]], str]


class TextStream:
    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = list(stops)
        self.ids: list[int] = []
        self.text = ""  # decoded text of ids[:read]
        self.prefix = self.read = 0  # the window ids[prefix:] that the next decode reads
        self.sent = ""  # text already handed out
        self.stopped = False  # a stop string was reached: the text ends before it

    def push(self, ids: Sequence[int], decode: Decode, final: bool = False) -> str:
        """Add tokens; the text that became final (maybe ""). `final`: no more tokens come."""
        if self.stopped:
            return ""
        self.ids.extend(ids)
        done = decode(self.ids[self.prefix:self.read])
        now = decode(self.ids[self.prefix:])
        if final or not now.endswith("\ufffd"):  # else wait for the rest of a multi-byte character
            self.text += now[len(done):]
            self.prefix, self.read = self.read, len(self.ids)
        text = self.text
        for stop in self.stops:  # (each search starts where a new match could begin)
            at = text.find(stop, max(0, len(self.sent) - len(stop) + 1))
            if at >= 0:
                text, self.stopped = text[:at], True
        if not (final or self.stopped):
            text = text[:len(text) - _holdback(text, self.stops)]
        if len(text) <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


def _holdback(text: str, stops: list[str]) -> int:
    """How many trailing characters to keep back: the possible start of a stop string."""
    n = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                n = max(n, k)
                break
    return n
