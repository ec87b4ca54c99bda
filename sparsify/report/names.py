"""Tensor names short enough for a table column or a plot axis, shortened in the middle.

One place for every renderer: the terminal table, the plot's tick labels and the progress bar.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

ELLIPSIS = "…"
_SEPARATORS = re.compile(r"([./])")


def elide(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters: the middle replaced by ``…`` when it is longer.

    >>> elide("encoder.layer.11.attention.self.query.weight", 20)
    'encoder.l…ery.weight'
    """
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    head = (width - 1) // 2
    tail = width - 1 - head
    return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")


def shorten(name: str, width: int, counts: Mapping[str, int] | None = None) -> str:
    """A tensor name in at most ``width`` characters, path components dropped from the middle first
    (each run of dropped components becomes one ``…``); character elision (:func:`elide`) when not
    even the last component fits. The last component is kept first, then the rarest ones by
    ``counts`` (how many of the names shown together have each component: the ones that tell
    these names apart), else the second last, the integer ones (layer numbers) and the first.

    >>> shorten("encoder.layer.11.attention.self.query.weight", 30)
    'encoder.layer.11…query.weight'
    >>> shorten("encoder.layer.11.attention.self.query.weight", 23)
    'encoder…11…query.weight'
    """
    if len(name) <= width:
        return name
    pieces = _SEPARATORS.split(name)
    parts, seps = pieces[0::2], pieces[1::2]
    n = len(parts)
    if counts is not None:
        order = [n - 1, *sorted(range(n - 1), key=lambda i: (counts.get(parts[i], 0), -i))]
    else:
        order = [n - 1, n - 2, *(i for i in range(n - 3, 0, -1) if parts[i].isdigit()), 0]
        order += [i for i in range(1, n - 2) if not parts[i].isdigit()]
    kept: set[int] = set()
    best = None
    for i in dict.fromkeys(j for j in order if 0 <= j < n):
        text = _joined(parts, seps, kept | {i})
        if len(text) <= width:
            kept.add(i)
            best = text
    return best if best is not None else elide(name, width)


def component_counts(names: list[str]) -> Counter:
    """In how many of ``names`` each path component occurs (for :func:`shorten`)."""
    return Counter(c for name in names for c in set(_SEPARATORS.split(name)[0::2]))


def shorten_all(names: list[str], width: int) -> list[str] | None:
    """Every name shortened to ``width`` by :func:`shorten`, telling them apart by their rare
    components; None when two different names would look alike (the same but for a ``…``)."""
    counts = component_counts(names)
    short = [shorten(n, width, counts) for n in names]
    seen: dict[str, str] = {}
    for name, text in zip(names, short, strict=True):
        # "a…b.c" and "a.b.c" look alike too: the dropped part must not be all that tells them apart
        key = _SEPARATORS.sub(".", text.replace(ELLIPSIS, ".")).strip(".")
        if seen.setdefault(key, name) != name:
            return None
    return short


def _joined(parts: list[str], seps: list[str], kept: set[int]) -> str:
    """The kept components with their separators; each run of dropped ones as one ``…``."""
    out: list[str] = []
    dropped = False
    for i, part in enumerate(parts):
        if i not in kept:
            dropped = True
            continue
        if out:
            out.append(ELLIPSIS if dropped else seps[i - 1])
        elif dropped:
            out.append(ELLIPSIS)
        out.append(part)
        dropped = False
    if dropped:
        out.append(ELLIPSIS)
    return "".join(out)


def shorten_names(names: list[str], width: int = 26) -> list[str]:
    """Tensor names short enough for an axis: shared leading path and Keras' ``:0`` suffixes dropped,
    repeated scope segments (``conv1/conv1_3/kernel`` -> ``conv1/kernel``) collapsed, then
    :func:`shorten_all` to ``width`` characters (the components that tell them apart kept; where
    that cannot keep them apart, :func:`shorten` of each). Falls back to the full names where
    dropping the shared parts would make two names the same."""

    def split(name: str) -> list[str]:
        return [s for s in re.split(r"[/.]", re.sub(r":\d+$", "", name)) if s]

    segs = [split(n) for n in names]
    common = 0
    if len(segs) > 1:
        while all(len(s) > common + 1 for s in segs) and len({s[common] for s in segs}) == 1:
            common += 1
    short = []
    for name, s in zip(names, segs, strict=True):
        s = s[common:]
        kept: list[str] = []
        for seg in s:
            if kept and seg.startswith(kept[-1]) and re.fullmatch(r"[_\-]?\d*", seg[len(kept[-1]) :]):
                continue  # Keras scope repeat: conv1/conv1_3
            kept.append(seg)
        sep = "/" if "/" in name else "."
        short.append(sep.join(kept) or name)
    if len(set(short)) != len(short):
        short = list(names)
    apart = shorten_all(short, width)
    return apart if apart is not None else [shorten(s, width) for s in short]
