"""Did-you-mean hints for names an operator types (nodes, models, components), for one-line errors."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'; did you mean 'x'?' for the closest of `choices`, else '; expected one of a, b, ...' (or '')."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    if not choices:
        return ""
    return f"; expected one of {', '.join(choices[:8])}{', ...' if len(choices) > 8 else ''}"
