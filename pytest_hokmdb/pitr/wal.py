"""WAL positions and segment names, so hokmdb can compare targets with what the repository holds.

PostgreSQL prints LSNs as ``X/X`` and names WAL files ``TTTTTTTTXXXXXXXXYYYYYYYY``;
pgBackRest reports both. Recovery windows, backup selection and gap diagnosis all need
to order them, which strings cannot do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")


class Lsn(int):
    """A WAL position; an ``int`` so positions order and subtract, printed the way PostgreSQL prints them."""

    @classmethod
    def parse(cls, text: str) -> Lsn:
        match = _LSN_RE.match(text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not a WAL position (LSN); expected the form 0/3000050")
        return cls((int(match[1], 16) << 32) | int(match[2], 16))

    def __str__(self) -> str:
        return f"{int(self) >> 32:X}/{int(self) & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"


@dataclass(frozen=True, order=True)
class Segment:
    """One WAL segment file: its timeline and its number in the WAL stream."""

    timeline: int
    number: int
    size: int = DEFAULT_SEGMENT_SIZE

    @classmethod
    def parse(cls, name: str, size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
        match = _SEGMENT_RE.match(name[:24])
        if match is None:
            raise ValueError(f"{name!r} is not a WAL segment name")
        per_id = 0x100000000 // size
        return cls(int(match[1], 16), int(match[2], 16) * per_id + int(match[3], 16), size)

    @classmethod
    def containing(cls, lsn: Lsn | int, timeline: int, size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
        return cls(timeline, int(lsn) // size, size)

    @property
    def name(self) -> str:
        per_id = 0x100000000 // self.size
        return f"{self.timeline:08X}{self.number // per_id:08X}{self.number % per_id:08X}"

    @property
    def start(self) -> Lsn:
        return Lsn(self.number * self.size)

    @property
    def end(self) -> Lsn:
        """The first position after this segment."""
        return Lsn((self.number + 1) * self.size)

    def next(self) -> Segment:
        return Segment(self.timeline, self.number + 1, self.size)

    def __str__(self) -> str:
        return self.name


def missing_segments(present: list[Segment], first: Segment, last: Segment) -> list[tuple[Segment, Segment]]:
    """Runs of segments absent between ``first`` and ``last`` (inclusive), as (first missing, last missing).

    Only one timeline is considered: a restored copy recovers along the backup's timeline.
    """
    have = {s.number for s in present if s.timeline == first.timeline}
    gaps: list[tuple[Segment, Segment]] = []
    number = first.number
    while number <= last.number:
        if number not in have:
            start = number
            while number + 1 <= last.number and (number + 1) not in have:
                number += 1
            gaps.append((Segment(first.timeline, start, first.size), Segment(first.timeline, number, first.size)))
        number += 1
    return gaps
