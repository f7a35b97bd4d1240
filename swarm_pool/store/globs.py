"""Glob patterns over project-relative paths: matching, and whether two patterns overlap.

Room: store.

Owns the glob dialect of file reservations. Paths use ``/``. ``*`` matches any run of
characters within one segment, ``?`` one character, ``[abc]`` / ``[a-z]`` / ``[!abc]``
one character of a class, ``**`` (as a whole segment) any number of segments, zero
included, ``{a,b}`` alternatives, and ``\\`` escapes the next character. Matching is
exact: ``src/auth`` names that path only (reservations turn a directory into
``src/auth/**`` when normalizing). ``patterns_overlap(a, b)`` answers "can some path
match both?" exactly for this dialect and errs towards True where it cannot tell (huge
character ranges, too many brace alternatives): a false conflict costs a wait, a missed
one costs a broken merge.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

# A single-character token: ("lit", "c"), ("any", ""), ("class", chars, negated) or
# ("star", ""). Classes keep their members expanded (ranges up to _MAX_RANGE chars).
_MAX_RANGE = 4096
_MAX_ALTERNATIVES = 64
GLOB_CHARS = frozenset("*?[{\\")


@dataclass(frozen=True)
class _Tok:
    kind: str  # "lit" | "any" | "star" | "class"
    chars: frozenset[str] = frozenset()
    negated: bool = False
    # A class with a range too large to expand: compare conservatively.
    huge: bool = False


_STAR = _Tok("star")
_ANY = _Tok("any")
_GLOBSTAR = "**"

Segment = tuple[_Tok, ...]
Parsed = tuple[Segment | str, ...]  # str is only ever _GLOBSTAR


def has_magic(pattern: str) -> bool:
    """True if the pattern contains glob syntax (not just a literal path)."""
    return any(c in GLOB_CHARS for c in pattern)


def expand_braces(pattern: str) -> list[str]:
    """``a/{b,c}.ts`` -> ``["a/b.ts", "a/c.ts"]``; nested braces work; capped in size."""
    start = _find_brace(pattern)
    if start is None:
        return [pattern]
    depth = 0
    parts: list[str] = []
    last = start + 1
    i = start
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                parts.append(pattern[last:i])
                break
        elif c == "," and depth == 1:
            parts.append(pattern[last:i])
            last = i + 1
        i += 1
    else:  # unbalanced: the brace is a literal character
        return [pattern]
    if len(parts) < 2:
        # "{a}" has no alternatives; keep the text as is, minus the braces.
        parts = parts or [""]
    head, tail = pattern[:start], pattern[i + 1 :]
    out: list[str] = []
    for part in parts:
        for expanded in expand_braces(head + part + tail):
            out.append(expanded)
            if len(out) > _MAX_ALTERNATIVES:
                # Too many alternatives to compare one by one: fall back to a wildcard
                # over the braces, which covers every alternative (errs towards True).
                return [head + "*" + tail.replace("}", "*").replace("{", "*")]
    return out


def _find_brace(pattern: str) -> int | None:
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] == "{":
            return i
        i += 1
    return None


def _parse_class(seg: str, i: int) -> tuple[_Tok, int] | None:
    """Parse ``[...]`` starting at ``seg[i] == "["``; None if unterminated."""
    j = i + 1
    negated = False
    if j < len(seg) and seg[j] in "!^":
        negated = True
        j += 1
    chars: set[str] = set()
    huge = False
    first = True
    while j < len(seg):
        c = seg[j]
        if c == "]" and not first:
            return _Tok("class", frozenset(chars), negated, huge), j + 1
        first = False
        if c == "\\" and j + 1 < len(seg):
            j += 1
            c = seg[j]
        if j + 2 < len(seg) and seg[j + 1] == "-" and seg[j + 2] != "]":
            hi = seg[j + 2]
            if hi == "\\" and j + 3 < len(seg):
                hi = seg[j + 3]
                j += 1
            lo_n, hi_n = ord(c), ord(hi)
            if hi_n - lo_n > _MAX_RANGE:
                huge = True
            else:
                chars.update(chr(n) for n in range(lo_n, hi_n + 1))
            j += 3
            continue
        chars.add(c)
        j += 1
    return None


def _parse_segment(seg: str) -> Segment:
    toks: list[_Tok] = []
    i = 0
    while i < len(seg):
        c = seg[i]
        if c == "*":
            if not toks or toks[-1] is not _STAR:  # "a**b" within a segment is "a*b"
                toks.append(_STAR)
            i += 1
        elif c == "?":
            toks.append(_ANY)
            i += 1
        elif c == "[":
            parsed = _parse_class(seg, i)
            if parsed is None:
                toks.append(_Tok("lit", frozenset("[")))
                i += 1
            else:
                toks.append(parsed[0])
                i = parsed[1]
        elif c == "\\" and i + 1 < len(seg):
            toks.append(_Tok("lit", frozenset(seg[i + 1])))
            i += 2
        else:
            toks.append(_Tok("lit", frozenset(c)))
            i += 1
    return tuple(toks)


@lru_cache(maxsize=4096)
def _parse(pattern: str) -> Parsed:
    out: list[Segment | str] = []
    for seg in pattern.split("/"):
        if seg in ("", "."):
            continue  # "a//b", "./a", trailing "/": no empty segments
        if seg == _GLOBSTAR:
            if not out or out[-1] != _GLOBSTAR:
                out.append(_GLOBSTAR)
            continue
        out.append(_parse_segment(seg))
    return tuple(out)


def _chars_meet(a: _Tok, b: _Tok) -> bool:
    """Can one character (not ``/``) match both single-character tokens?"""
    if a.kind == "any" or b.kind == "any":
        return True
    if a.kind == "lit" and b.kind == "lit":
        return a.chars == b.chars
    if a.kind == "lit":
        a, b = b, a
    # a is a class now; b is a literal or a class.
    if a.huge or b.huge:
        return True
    if b.kind == "lit":
        (c,) = b.chars
        return (c in a.chars) != a.negated
    if a.negated and b.negated:
        return True  # the alphabet is far larger than two finite exclusions
    if a.negated:
        a, b = b, a
    if b.negated:
        return bool(a.chars - b.chars)
    return bool(a.chars & b.chars)


def _segments_meet(s: Segment, t: Segment) -> bool:
    """Is there one path segment matched by both segment globs?"""
    memo: dict[tuple[int, int], bool] = {}

    def go(p: int, q: int) -> bool:
        key = (p, q)
        if key in memo:
            return memo[key]
        memo[key] = False  # guards against re-entry; every recursion makes progress
        if p == len(s) and q == len(t):
            res = True
        elif p < len(s) and s[p] is _STAR:
            res = go(p + 1, q) or (q < len(t) and go(p, q + 1))
        elif q < len(t) and t[q] is _STAR:
            res = go(p, q + 1) or (p < len(s) and go(p + 1, q))
        elif p == len(s) or q == len(t):
            res = False
        else:
            res = _chars_meet(s[p], t[q]) and go(p + 1, q + 1)
        memo[key] = res
        return res

    return go(0, 0)


def _parsed_overlap(a: Parsed, b: Parsed) -> bool:
    memo: dict[tuple[int, int], bool] = {}

    def go(i: int, j: int) -> bool:
        key = (i, j)
        if key in memo:
            return memo[key]
        memo[key] = False
        if i == len(a) or j == len(b):
            # One pattern is used up: the path ends here, so the rest of the other one
            # must be able to match nothing, which only ``**`` can.
            rest = b[j:] if i == len(a) else a[i:]
            res = all(seg == _GLOBSTAR for seg in rest)
        elif a[i] == _GLOBSTAR:
            res = go(i + 1, j) or go(i, j + 1)
        elif b[j] == _GLOBSTAR:
            res = go(i, j + 1) or go(i + 1, j)
        else:
            sa, sb = a[i], b[j]
            assert not isinstance(sa, str) and not isinstance(sb, str)
            res = _segments_meet(sa, sb) and go(i + 1, j + 1)
        memo[key] = res
        return res

    return go(0, 0)


def _literal_mismatch(a: str, b: str) -> bool:
    """Cheap proof of disjointness: leading literal segments that differ."""
    for x, y in zip(a.split("/"), b.split("/"), strict=False):
        if has_magic(x) or has_magic(y) or x in ("", ".") or y in ("", "."):
            return False
        if x != y:
            return True
    return False


@lru_cache(maxsize=65536)
def patterns_overlap(a: str, b: str) -> bool:
    """Can some path match both glob patterns? Symmetric; errs towards True."""
    # Most held/requested pairs part at their first directory; no need to parse them.
    if _literal_mismatch(a, b):
        return False
    for x in expand_braces(a):
        for y in expand_braces(b):
            if _parsed_overlap(_parse(x), _parse(y)):
                return True
    return False


def escape(path: str) -> str:
    """A pattern that matches exactly the literal ``path``."""
    return "".join("\\" + c if c in GLOB_CHARS or c == "]" else c for c in path)


def matches(pattern: str, path: str) -> bool:
    """Does ``pattern`` match the literal ``path``?"""
    parsed_path = tuple(s for s in path.split("/") if s not in ("", "."))
    return any(_match(_parse(alt), parsed_path) for alt in expand_braces(pattern))


def _match(p: Parsed, path: tuple[str, ...]) -> bool:
    memo: dict[tuple[int, int], bool] = {}

    def go(i: int, j: int) -> bool:
        key = (i, j)
        if key in memo:
            return memo[key]
        if i == len(p):
            res = j == len(path)
        elif p[i] == _GLOBSTAR:
            res = go(i + 1, j) or (j < len(path) and go(i, j + 1))
        elif j == len(path):
            res = False
        else:
            seg = p[i]
            assert not isinstance(seg, str)
            lit = tuple(_Tok("lit", frozenset(c)) for c in path[j])
            res = _segments_meet(seg, lit) and go(i + 1, j + 1)
        memo[key] = res
        return res

    return go(0, 0)
