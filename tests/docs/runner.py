"""Runs a page's code blocks as the page shows them (the rules are in ``markdown.py``).

The fixtures a page may name with ``<!-- docs-test: fixtures ... -->`` are
`FIXTURES`; each adds names to the page's Python namespace and variables to
its environment, and the page says in prose what they are.
"""

from __future__ import annotations

import doctest
import io
import ipaddress
import os
import re
import socket
import sqlite3
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from payout_ledger import PayoutLedger, ServiceProvider
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from payout_ledger.testing.fake_stripe import FakeStripe
from tests.docs.markdown import ROOT, Block, Page, load_pages

COMMAND_TIMEOUT = 120
_CHECK = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
_EXIT = re.compile(r"\s#\s*exits?\s+(?P<status>\d+)\b")
_PREFIX = "PAYOUT_LEDGER_"
_BIN = str(Path(sys.executable).parent)
"""The environment's scripts (``payout-ledger``, ``python``): first on every page's PATH."""


@dataclass
class FixtureValues:
    """What a fixture gives a page: Python names and environment variables."""

    namespace: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


Fixture = Callable[[Path], AbstractContextManager[FixtureValues]]


@contextmanager
def fake_stripe(workdir: Path) -> Iterator[FixtureValues]:
    """A running `FakeStripe` named ``fake_stripe``; ``PAYOUT_LEDGER_STRIPE_API_KEY``
    and ``PAYOUT_LEDGER_STRIPE_API_BASE`` point at it."""
    with FakeStripe() as server:
        yield FixtureValues(
            namespace={"fake_stripe": server},
            env={
                f"{_PREFIX}STRIPE_API_KEY": server.api_key,
                f"{_PREFIX}STRIPE_API_BASE": server.url,
            },
        )


@dataclass(frozen=True)
class _Row:
    id: str
    user_id: str
    stripe_account_id: str | None


@dataclass(frozen=True)
class _EventService:
    id: str
    service_provider_id: str
    price_minor_units: int


class _HostDatabase:
    """The host's own tables, as far as the examples read them."""

    def __init__(self, rows: list[_Row]) -> None:
        self._rows = {row.id: row for row in rows}

    def fetch_provider(self, provider_id: str) -> _Row | None:
        return self._rows.get(provider_id)


@contextmanager
def host(workdir: Path) -> Iterator[FixtureValues]:
    """Stand-ins for what a host owns: ``my_providers`` (a provider directory with
    ``prov_7``, user ``user_7``, account ``acct_7``), ``my_gateway`` (an
    `InMemoryTransferGateway`), ``db.fetch_provider(id)`` (the same provider as a
    row of the host's table) and ``service`` (event service ``es_42`` of
    ``prov_7``, priced 5000 minor units)."""
    row = _Row("prov_7", "user_7", "acct_7")
    yield FixtureValues(
        namespace={
            "my_providers": InMemoryProviderDirectory(
                [ServiceProvider(id=row.id, user_id=row.user_id, stripe_account_id="acct_7")]
            ),
            "my_gateway": InMemoryTransferGateway(),
            "db": _HostDatabase([row]),
            "service": _EventService("es_42", "prov_7", 5000),
        }
    )


FIXTURES: dict[str, Fixture] = {"fake-stripe": fake_stripe, "host": host}


class BlockFailedError(AssertionError):
    """A block did not run as the page shows it."""


class PageRun:
    """One page's run: its working directory, environment, namespace and fixtures."""

    def __init__(self, page: Page, workdir: Path) -> None:
        self.page = page
        self.workdir = workdir
        self.done: set[str] = set()
        self.failed: str | None = None
        self._stack = ExitStack()
        name = "docs_page_" + re.sub(r"\W", "_", page.path)
        self.module = types.ModuleType(name)
        sys.modules[name] = self.module  # dataclasses and pydantic look their module up
        self.env = dict(page.env)
        for fixture_name in page.fixtures:
            values = self._stack.enter_context(FIXTURES[fixture_name](workdir))
            self.module.__dict__.update(values.namespace)
            self.env.update(values.env)

    def close(self) -> None:
        for value in list(self.module.__dict__.values()):
            if isinstance(value, PayoutLedger):
                value.close()
        sys.modules.pop(self.module.__name__, None)
        self._stack.close()

    def run_through(self, block: Block) -> None:
        """Run the page's blocks up to and including ``block``, each once."""
        for earlier in self.page.runnable:
            if earlier.id in self.done:
                continue
            if self.failed is not None:
                raise BlockFailedError(f"{block.id} not run: the page's {self.failed} failed")
            try:
                self._run(earlier)
            except BaseException:
                self.failed = earlier.id
                raise
            self.done.add(earlier.id)
            if earlier == block:
                return

    def _run(self, block: Block) -> None:
        runner = {
            "python": self._python,
            "pycon": self._pycon,
            "console": self._console,
            "bash": self._bash,
            "sql": self._sql,
        }[block.lang]
        runner(block)

    # Python.

    def _python(self, block: Block) -> None:
        includes = block.includes
        if includes is not None:
            for path in includes:
                script = {"__name__": "__main__", "__file__": str(path)}
                code = compile(
                    path.read_text(encoding="utf-8"), str(path), "exec", dont_inherit=True
                )
                with self.activated():
                    exec(code, script)  # noqa: S102 - the page's own example
            return
        namespace = self.module.__dict__
        before = set(namespace)
        # Padding keeps tracebacks on the page's own line numbers.
        source = "\n" * block.line + block.code
        # dont_inherit: the page's code runs as in a file of its own, without this
        # module's ``from __future__ import annotations``.
        code = compile(source, str(ROOT / block.page), "exec", dont_inherit=True)
        with self.activated():
            exec(code, namespace)  # noqa: S102 - the page's own example
            for name in sorted(set(namespace) - before):
                if name.startswith("test_") and callable(namespace[name]):
                    namespace[name]()

    def _pycon(self, block: Block) -> None:
        test = doctest.DocTestParser().get_doctest(
            block.code, self.module.__dict__, block.id, str(ROOT / block.page), block.line
        )
        report = io.StringIO()
        runner = doctest.DocTestRunner(optionflags=_CHECK, verbose=False)
        with self.activated():
            result = runner.run(test, out=report.write, clear_globs=False)
        if result.failed:
            raise BlockFailedError(report.getvalue())

    @contextmanager
    def activated(self) -> Iterator[None]:
        """The page's working directory and environment, and loopback-only sockets."""
        saved_env = dict(os.environ)
        saved_cwd = Path.cwd()
        for name in [n for n in os.environ if n.startswith(_PREFIX)]:
            del os.environ[name]
        os.environ.update(self.env)
        os.environ["PATH"] = os.pathsep.join([_BIN, saved_env.get("PATH", "")])
        os.chdir(self.workdir)
        try:
            with _loopback_only():
                yield
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)

    # Shell.

    def shell_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PREFIX)}
        tmp = self.workdir / ".tmp"
        tmp.mkdir(exist_ok=True)
        env.update(
            PATH=os.pathsep.join([_BIN, env.get("PATH", "")]),
            TMPDIR=str(tmp),
            NO_COLOR="1",
            COLUMNS="100",
            # The commands the pages show must not warn either (see pyproject.toml).
            PYTHONWARNINGS="error",
        )
        env.update(self.env)
        return env

    def _shell(self, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # the page's own command, run as a user would
            ["bash", *extra, "-c", command],
            cwd=self.workdir,
            env=self.shell_env(),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

    def _console(self, block: Block) -> None:
        for line, command, want in console_commands(block):
            expected = _expected_status(command)
            done = self._shell(command)
            got = done.stdout + done.stderr
            where = f"{block.page}:{line}: $ {command}"
            if done.returncode != expected:
                raise BlockFailedError(
                    f"{where}\nexited {done.returncode}, the page says {expected}\n{got}"
                )
            checker = doctest.OutputChecker()
            if want.strip() and not checker.check_output(want, got, _CHECK):
                example = doctest.Example(command, want)
                raise BlockFailedError(
                    where + "\n" + checker.output_difference(example, got, _CHECK)
                )

    def _bash(self, block: Block) -> None:
        done = self._shell(block.code, "-e")
        if done.returncode != 0:
            raise BlockFailedError(
                f"{block.id}: the script exited {done.returncode}\n{done.stdout}{done.stderr}"
            )

    # SQL.

    def _sql(self, block: Block) -> None:
        url = self.env.get(f"{_PREFIX}STORE_URL", "")
        if not url.startswith("sqlite:///"):
            raise BlockFailedError(
                f"{block.id}: sql blocks need a page env PAYOUT_LEDGER_STORE_URL"
            )
        database = (self.workdir / url.removeprefix("sqlite:///")).resolve()
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
            for statement in sql_statements(block.code):
                try:
                    conn.execute(statement).fetchall()
                except sqlite3.Error as exc:
                    raise BlockFailedError(f"{block.id}: {exc}\n{statement}") from exc


class PageRuns:
    """One run per page, started when its first block is tested, closed at the end."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self._runs: dict[str, PageRun] = {}
        self._pages = {page.path: page for page in load_pages()}

    def run(self, page: str) -> PageRun:
        if page not in self._runs:
            workdir = self._tmp / page.replace("/", "_").removesuffix(".md")
            workdir.mkdir()
            self._runs[page] = PageRun(self._pages[page], workdir)
        return self._runs[page]

    def close(self) -> None:
        for run in self._runs.values():
            run.close()


def console_commands(block: Block) -> list[tuple[int, str, str]]:
    """Each ``$ command`` of a console block: its line, the command, the output shown."""
    found: list[tuple[int, str, list[str]]] = []
    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            start = block.line + 1 + i
            command = line[2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            found.append((start, command, []))
        elif found:
            found[-1][2].append(line)
        elif line.strip():
            raise BlockFailedError(f"{block.id}: a console block starts with a '$ ' command")
        i += 1
    if not found:
        raise BlockFailedError(f"{block.id}: a console block has no '$ ' command")
    return [(n, command, "\n".join(out).strip() + "\n") for n, command, out in found]


def _expected_status(command: str) -> int:
    found = _EXIT.search(command)
    return int(found["status"]) if found else 0


def sql_statements(code: str) -> list[str]:
    statements, current = [], ""
    for line in code.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip() and not current.strip().startswith("--"):
        statements.append(current.strip())
    return statements


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Refuse connections that would leave the machine: the examples need no network."""
    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def allowed(sock: socket.socket, address: Any) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        host = str(address[0])
        try:
            local = ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = host == "localhost"
        if not local:
            raise OSError(f"the docs' examples make no network connections ({host})")

    def connect(sock: socket.socket, address: Any) -> None:
        allowed(sock, address)
        original_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        allowed(sock, address)
        return original_connect_ex(sock, address)

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        socket.socket.connect = original_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = original_connect_ex  # type: ignore[method-assign]
