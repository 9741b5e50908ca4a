"""The fenced code blocks of README.md and docs/*.md, and what each page says about running them.

The rules a page follows (``test_docs.py`` checks them and runs the blocks):

* Every fenced block runs when the test suite runs, in page order:

  - ``python``: executed. The blocks of one page share a namespace, so a page
    can build on its earlier blocks. A block made only of ``--8<-- "FILE"``
    lines (pymdownx.snippets) runs the included file as a script. Functions
    named ``test_*`` that a block defines are then called.
  - ``pycon``: a doctest in the page's namespace; the output shown must be the
    output given (``...`` matches anything, whitespace runs are one space).
  - ``console``: each ``$ command`` runs in bash. The lines after it, if any,
    are its expected output (stdout then stderr, compared like ``pycon``). It
    must exit 0, or the status a trailing ``# exit N`` comment names.
  - ``bash``: the block runs as one ``bash -e`` script and must exit 0.
  - ``sql``: each statement runs, read-only, against the SQLite store named by
    the page's ``PAYOUT_LEDGER_STORE_URL``.

* A block that cannot run here is marked on the line before it with
  ``<!-- not-run: REASON -->`` (a reason of two words or more). Any other
  block (``text`` included) without that mark is a failure, and so is a mark
  that is not followed by a block.

* Each page runs in a fresh temporary directory as working directory, with
  every ``PAYOUT_LEDGER_*`` variable cleared, the project's ``payout-ledger``
  and ``python`` first on ``PATH``, and no network (Python blocks may connect
  to loopback addresses only). A page adds to that with comments, and says so
  in its prose: ``<!-- docs-test: env NAME=value -->`` and
  ``<!-- docs-test: fixtures NAME, ... -->`` (the fixtures are in ``runner.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository: pages and snippet includes are relative to it, as for mkdocs."""

RUNNABLE = frozenset({"python", "pycon", "console", "bash", "sql"})

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not-run:(?P<reason>.*?)-->\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>[\w-]+)\s*(?P<value>.*?)\s*-->\s*$")
_ENV = re.compile(r"^(?P<name>[A-Z_][A-Z0-9_]*)=(?P<value>.*)$")
_INCLUDE = re.compile(r'^--8<--\s+"(?P<path>[^"]+)"\s*$')


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str
    line: int
    """The line of the opening fence (1-based)."""
    lang: str
    code: str
    not_run: str | None = None
    """The reason given by ``<!-- not-run: ... -->``, or None."""

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def includes(self) -> list[Path] | None:
        """The files a ``--8<--`` block includes, or None for an ordinary block."""
        lines = [line for line in self.code.splitlines() if line.strip()]
        matches = [_INCLUDE.match(line.strip()) for line in lines]
        if not lines or not all(matches):
            return None
        return [ROOT / m["path"] for m in matches if m is not None]


@dataclass
class Page:
    """A page's blocks, the environment and fixtures it states, and any rule it breaks."""

    path: str
    blocks: list[Block] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    fixtures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def runnable(self) -> list[Block]:
        return [b for b in self.blocks if b.not_run is None and b.lang in RUNNABLE]

    @property
    def not_run(self) -> list[Block]:
        return [b for b in self.blocks if b.not_run is not None]


def page_paths(root: Path = ROOT) -> list[Path]:
    """README.md and every page of the documentation site."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def parse_page(text: str, path: str) -> Page:
    """Split a page into its fenced blocks and directives (see the module's rules)."""
    page = Page(path)
    lines = text.splitlines()
    pending: tuple[int, str] | None = None  # a not-run mark waiting for its block
    i = 0
    while i < len(lines):
        line = lines[i]
        opening = _FENCE.match(line)
        if opening:
            end = _closing_fence(lines, i, opening["fence"])
            if end is None:
                page.problems.append(f"{path}:{i + 1}: a code block is never closed")
                return page
            indent = len(opening["indent"])
            code = "\n".join(
                raw[indent:] if raw[:indent].isspace() else raw for raw in lines[i + 1 : end]
            )
            lang = opening["info"].lower()
            reason = pending[1] if pending else None
            page.blocks.append(Block(path, i + 1, lang, code + "\n", reason))
            if reason is None and lang not in RUNNABLE:
                page.problems.append(
                    f"{path}:{i + 1}: a ```{lang or '(no language)'} block cannot be run: "
                    "mark it with <!-- not-run: REASON --> on the line before it"
                )
            pending = None
            i = end + 1
            continue
        if pending is not None and line.strip():
            page.problems.append(f"{path}:{pending[0]}: a not-run mark with no code block after it")
            pending = None
        mark = _NOT_RUN.match(line)
        directive = _DIRECTIVE.match(line)
        if mark:
            reason = mark["reason"].strip()
            if len(reason.split()) < 2:
                page.problems.append(
                    f"{path}:{i + 1}: a not-run mark needs a reason: {line.strip()}"
                )
            pending = (i + 1, reason)
        elif directive:
            _apply_directive(page, i + 1, directive["kind"], directive["value"])
        i += 1
    if pending is not None:
        page.problems.append(f"{path}:{pending[0]}: a not-run mark with no code block after it")
    return page


def _closing_fence(lines: list[str], start: int, fence: str) -> int | None:
    for j in range(start + 1, len(lines)):
        stripped = lines[j].strip()
        if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
            return j
    return None


def _apply_directive(page: Page, line: int, kind: str, value: str) -> None:
    if kind == "env":
        found = _ENV.match(value)
        if found is None:
            page.problems.append(f"{page.path}:{line}: expected docs-test: env NAME=value")
            return
        page.env[found["name"]] = found["value"]
    elif kind == "fixtures":
        page.fixtures.extend(name.strip() for name in value.split(",") if name.strip())
    else:
        page.problems.append(f"{page.path}:{line}: unknown docs-test directive {kind!r}")


def load_pages(root: Path = ROOT) -> list[Page]:
    return [
        parse_page(path.read_text(encoding="utf-8"), path.relative_to(root).as_posix())
        for path in page_paths(root)
    ]
