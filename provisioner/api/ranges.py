"""Byte ranges of a response, per RFC 9110 §14 (Range, Content-Range, If-Range).

A server may ignore a Range header (§14.2), and must ignore one it does not understand: an
unknown range unit, bad syntax, or (our choice) several ranges all get the whole representation
with 200. Only a well-formed single range that the representation cannot satisfy is a 416.
"""

from __future__ import annotations

import re

UNSATISFIABLE = "unsatisfiable"
_RANGE = re.compile(r"^\s*bytes\s*=\s*(?:(?P<first>\d{1,19})\s*-\s*(?P<last>\d{1,19})?|-\s*(?P<suffix>\d{1,19}))\s*$",
                    re.IGNORECASE)  # §14.1.2: int-range / suffix-range; the unit is case-insensitive


def byte_range(header: str | None, size: int, if_range: str | None = None, etag: str = "") -> tuple[int, int] | str | None:
    """(first, last) inclusive to send with 206; UNSATISFIABLE for a 416; None for the whole (200)."""
    if not header:
        return None
    if if_range is not None and if_range.strip() != etag:
        return None  # §13.1.5: the representation changed (or the validator is not ours): send it whole
    m = _RANGE.match(header)
    if m is None:
        return None  # unknown unit, several ranges, or not a range at all: ignored (§14.2)
    if m["suffix"] is not None:
        n = int(m["suffix"])
        if n == 0 or size == 0:
            return UNSATISFIABLE  # §14.1.3: a suffix of zero selects nothing
        return max(0, size - n), size - 1  # §14.1.2: a suffix longer than the file is the whole file
    first = int(m["first"])
    last = int(m["last"]) if m["last"] is not None else None
    if last is not None and last < first:
        return None  # §14.1.1: invalid, so the header is ignored
    if first >= size:
        return UNSATISFIABLE  # §14.1.1: the first position is past the end
    return first, size - 1 if last is None else min(last, size - 1)
