"""The documentation's links and sizes: README.md, CHANGELOG.md and docs/**/*.md.

Every relative link must name a file that exists, and every ``#anchor`` a heading of
the file it points into, slugged as GitHub does; the README stays a front page (at most
200 lines, none over 400 characters). Room: tests (the documentation has no room of its
own in the package). Reads files only, never the network.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 200
README_MAX_LINE_CHARS = 400

# Inline links and images ``[text](target "title")``; the text may hold one level of
# brackets (``[`x`]``) and the target may be wrapped in ``<...>``.
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)"
)
_REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def doc_files(root: Path = ROOT) -> list[Path]:
    """The Markdown files the documentation is made of."""
    files = [root / "README.md", root / "CHANGELOG.md"]
    files += sorted((root / "docs").rglob("*.md"))
    return [f for f in files if f.is_file()]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a link inside a fence is sample text)."""
    out: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        match = _FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif match.group(1) == fence:
                fence = None
            continue
        if fence is None:
            out.append(line)
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text lower-cased, punctuation
    other than ``-`` and ``_`` dropped, each space a ``-``."""
    text = _CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"(\*\*|__|\*|~~)", "", text)  # emphasis markers
    text = text.strip().lower()
    kept = "".join(
        ch
        for ch in text
        if ch in " -_" or unicodedata.category(ch)[0] in ("L", "N") or ch == "\u200d"
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, duplicates numbered ``-1``, ``-2``..."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def links(path: Path) -> list[str]:
    """The link targets written in a Markdown file, code spans and fences left out."""
    found: list[str] = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        ref = _REFERENCE_DEF.match(line)
        if ref:
            found.append(ref.group(1))
            continue
        bare = _CODE_SPAN.sub("", line)
        found += [m.group(1) for m in _INLINE_LINK.finditer(bare)]
    return found


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of ``path`` that names no file, or no heading of its file."""
    problems: list[str] = []
    for target in links(path):
        if not target or _SCHEME.match(target) or target.startswith("//"):
            continue  # an absolute URL: not ours to check offline
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path.relative_to(root)}: ({target})"
        if not dest.exists():
            problems.append(f"{where}: no such file {dest}")
            continue
        if anchor and (dest.is_dir() or dest.suffix != ".md"):
            problems.append(f"{where}: an anchor into a file that is not Markdown")
        elif anchor and unquote(anchor) not in anchors(dest):
            problems.append(f"{where}: no heading #{anchor} in {dest.relative_to(root)}")
    return problems


def test_the_documentation_exists() -> None:
    names = {f.relative_to(ROOT).as_posix() for f in doc_files()}
    assert {"README.md", "CHANGELOG.md", "docs/index.md", "docs/concepts.md"} <= names


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_index_links_every_page() -> None:
    index = ROOT / "docs" / "index.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in links(index)}
    pages = {p.resolve() for p in (ROOT / "docs").rglob("*.md")} - {index.resolve()}
    assert sorted(str(p.relative_to(ROOT)) for p in pages - linked) == []


def test_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES
    long = [(n, len(line)) for n, line in enumerate(lines, 1) if len(line) > README_MAX_LINE_CHARS]
    assert long == []


def test_a_broken_link_is_caught(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## The `worker_blocked` event\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/page.md#the-worker_blocked-event)\n"
        "[gone](docs/missing.md)\n"
        "[bad anchor](docs/page.md#no-such-heading)\n"
        "`[in code](docs/nowhere.md)` and [web](https://example.org/x)\n"
        "```\n[in a fence](docs/nowhere.md)\n```\n"
    )
    problems = broken_links(tmp_path / "README.md", root=tmp_path)
    assert len(problems) == 2
    assert "no such file" in problems[0] and "missing.md" in problems[0]
    assert "no heading #no-such-heading" in problems[1]


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("The `worker_blocked` event", "the-worker_blocked-event"),
        ("Workers in waves: legacy against lean", "workers-in-waves-legacy-against-lean"),
        ("`run` survives its supervisor", "run-survives-its-supervisor"),
        ("2026-12-01: round 2, last session", "2026-12-01-round-2-last-session"),
        ("One store for several hosts (PostgreSQL)", "one-store-for-several-hosts-postgresql"),
        ("Why a **bold** [link](x.md)?", "why-a-bold-link"),
    ],
)
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug
