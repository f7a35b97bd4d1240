"""Glob overlap: a table of cases (the issue's examples first), symmetry, and a
brute-force cross-check of ``patterns_overlap`` against ``matches`` on enumerated paths."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm_pool.store.globs import escape, expand_braces, matches, patterns_overlap

OVERLAP_CASES: list[tuple[str, str, bool]] = [
    # the examples
    ("src/**", "src/auth/login.py", True),
    ("src/*.py", "src/a.py", True),
    ("src/auth/**", "src/**/*.py", True),
    ("src/a/**", "src/b/**", False),
    # literals
    ("src/a.py", "src/a.py", True),
    ("src/a.py", "src/b.py", False),
    ("src/a.py", "src/a.pyc", False),
    # matching is exact: a literal directory name is not its contents (normalize()
    # turns directories into "dir/**"), but "dir/**" matches the directory itself
    ("src/auth", "src/auth/login.py", False),
    ("src/auth/**", "src/auth", True),
    ("src", "src/**/*.py", False),
    ("src/auth/**", "src/authz/x.py", False),
    # single star stays within a segment
    ("src/*.py", "src/a/b.py", False),
    ("src/*.py", "src/x.py/inner", False),
    ("src/*", "src/a/b.py", False),
    ("src/*/**", "src/a/b.py", True),
    ("*.py", "src/a.py", False),
    ("*.md", "docs", False),
    ("**/*.py", "src/a.py", True),
    ("**/*.py", "README.md", False),
    ("**", "anything/at/all", True),
    ("src/**/test_*.py", "src/a/b/test_x.py", True),
    ("src/**/test_*.py", "src/a/b/x_test.py", False),
    ("src/**/a.py", "src/a.py", True),  # ** matches zero segments
    ("a/**/b/**/c", "a/x/b/y/c", True),
    ("a/**/b", "a/c", False),
    # star vs star
    ("src/a*.py", "src/*b.py", True),
    ("src/a*", "src/b*", False),
    ("src/*a", "src/*b", False),
    ("src/*a*", "src/*b*", True),
    ("x*y", "*z", False),
    # ? and classes
    ("src/?.py", "src/a.py", True),
    ("src/?.py", "src/ab.py", False),
    ("src/??.py", "src/*.py", True),
    ("src/[abc].py", "src/b.py", True),
    ("src/[abc].py", "src/d.py", False),
    ("src/[a-c].py", "src/[c-e].py", True),
    ("src/[a-c].py", "src/[d-f].py", False),
    ("src/[!a].py", "src/a.py", False),
    ("src/[!a].py", "src/b.py", True),
    ("src/[!a].py", "src/[a].py", False),
    ("src/[!a].py", "src/[ab].py", True),
    ("src/[!a].py", "src/[!b].py", True),
    # braces
    ("src/{a,b}.py", "src/b.py", True),
    ("src/{a,b}.py", "src/c.py", False),
    ("{src,lib}/**", "lib/x.py", True),
    # escapes
    ("src/\\*.py", "src/a.py", False),
    ("src/\\*.py", "src/*.py", True),
]


@pytest.mark.parametrize(("a", "b", "expected"), OVERLAP_CASES)
def test_overlap_table(a: str, b: str, expected: bool) -> None:
    assert patterns_overlap(a, b) is expected
    assert patterns_overlap(b, a) is expected  # checked both ways


COVER_CASES: list[tuple[str, str, bool]] = [
    ("src/**", "src/auth/login.py", True),
    ("src/*.py", "src/a.py", True),
    ("src/*.py", "src/a/b.py", False),
    ("src/auth", "src/auth/login.py", False),
    ("src/auth/**", "src/auth/login.py", True),
    ("src/auth/**", "src/auth", True),
    ("src/auth/login.py", "src/auth", False),
    ("**/*.py", "a/b/c.py", True),
    ("src/{a,b}.py", "src/b.py", True),
    ("docs/[!x]*.md", "docs/xy.md", False),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), COVER_CASES)
def test_matches_table(pattern: str, path: str, expected: bool) -> None:
    assert matches(pattern, path) is expected


def test_expand_braces() -> None:
    assert expand_braces("a/{b,c}/{d,e}") == ["a/b/d", "a/b/e", "a/c/d", "a/c/e"]
    assert expand_braces("a/{b,{c,d}}") == ["a/b", "a/c", "a/d"]
    assert expand_braces("a/{b") == ["a/{b"]
    assert expand_braces("a/\\{b,c}") == ["a/\\{b,c}"]


def test_escape_matches_only_the_literal() -> None:
    weird = "src/a*[b]?.py"
    assert matches(escape(weird), weird)
    assert not matches(escape(weird), "src/aX[b]?.py")


# Brute force: over a small alphabet, enumerate every path of up to 3 segments of up to
# 2 characters; two patterns overlap iff some enumerated path matches both (the
# patterns below never need longer paths to witness an overlap).
_ALPHABET = "ab"
_SEGMENTS = ["".join(p) for n in (1, 2) for p in itertools.product(_ALPHABET, repeat=n)]
_PATHS = ["/".join(parts) for n in (1, 2, 3) for parts in itertools.product(_SEGMENTS, repeat=n)]
_SEG_PATTERNS = ["a", "b", "ab", "*", "a*", "*b", "?", "[a]", "[ab]", "[!a]", "?b"]


def _pattern() -> st.SearchStrategy[str]:
    seg = st.sampled_from([*_SEG_PATTERNS, "**"])
    return st.lists(seg, min_size=1, max_size=2).map("/".join)


@settings(max_examples=300, deadline=None)
@given(_pattern(), _pattern())
def test_overlap_agrees_with_brute_force(a: str, b: str) -> None:
    witness = any(matches(a, p) and matches(b, p) for p in _PATHS)
    assert patterns_overlap(a, b) is witness, (a, b)
