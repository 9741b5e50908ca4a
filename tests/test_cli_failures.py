"""When an operator command cannot run: one line with the cause, and an exit code that says so.

Exit codes (see ``payout_ledger.cli``): 0 ok, 1 findings, 2 usage or
configuration, 3 the store or Stripe cannot be reached or opened. Every
operator command is held to them; the library raises typed ``StoreError``s.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from click.testing import Result
from typer.testing import CliRunner

from payout_ledger import LedgerSettings, PayoutLedger, PayoutLedgerError
from payout_ledger.cli import app
from payout_ledger.errors import StoreError, StoreNotFoundError, StoreUnavailableError
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.conftest import schema_of_its_own, with_query
from tests.support import ALICE, release

PASSWORD = "s3cret-Pa55word"

COMMANDS = {
    "resume": ["resume"],
    "reconcile": ["reconcile", "--since", "2000-01-01"],
    "audit": ["audit"],
    "verify": ["verify"],
    "seal": ["seal"],
    "project": ["project"],
    "export": ["export"],
    "sync-account": ["sync-account", "acct_1"],
}
EVERY_COMMAND = pytest.mark.parametrize("command", sorted(COMMANDS))


def _env(store_url: str, **more: str) -> dict[str, str]:
    return {
        "PAYOUT_LEDGER_STORE_URL": store_url,
        "PAYOUT_LEDGER_STRIPE_API_KEY": "sk_test_cli",
        "PAYOUT_LEDGER_STRIPE_API_BASE": f"http://127.0.0.1:{_closed_port()}",
        "PAYOUT_LEDGER_STRIPE_MAX_NETWORK_RETRIES": "0",
        "PAYOUT_LEDGER_POSTGRES_CONNECT_TIMEOUT": "2",
        **more,
    }


def _run(command: str, env: dict[str, str]) -> Result:
    return CliRunner().invoke(app, COMMANDS[command], env=env)


def _error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _PasswordRefusingServer:
    """Speaks just enough of PostgreSQL's protocol to refuse every password (28P01)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._refuse, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError
            data += chunk
        return data

    def _refuse(self, conn: socket.socket) -> None:
        with conn:
            try:
                while True:  # SSLRequest / GSSENCRequest ("N": not here), then StartupMessage
                    length, code = struct.unpack("!ii", self._read(conn, 8))
                    if code in (80877103, 80877104):
                        conn.sendall(b"N")
                        continue
                    self._read(conn, length - 8)
                    break
                conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # cleartext password, please
                kind = self._read(conn, 1)
                (length,) = struct.unpack("!i", self._read(conn, 4))
                self._read(conn, length - 4)
                assert kind == b"p"
                fields = b"".join(
                    tag + text.encode() + b"\0"
                    for tag, text in (
                        (b"S", "FATAL"),
                        (b"V", "FATAL"),
                        (b"C", "28P01"),
                        (b"M", 'password authentication failed for user "payout"'),
                    )
                )
                body = fields + b"\0"
                conn.sendall(b"E" + struct.pack("!i", len(body) + 4) + body)
            except (ConnectionError, OSError, AssertionError):
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def refusing_server() -> Iterator[_PasswordRefusingServer]:
    server = _PasswordRefusingServer()
    yield server
    server.close()


# Finding 3: connection and configuration failures.


@EVERY_COMMAND
def test_a_wrong_password_is_one_line_with_the_cause_exit_3(
    command: str, refusing_server: _PasswordRefusingServer
) -> None:
    """PostgreSQL refusing the password: its message, the redacted URL, exit 3, no wait."""
    url = f"postgresql://payout:{PASSWORD}@127.0.0.1:{refusing_server.port}/test"

    started = time.monotonic()
    result = _run(command, _env(url))
    elapsed = time.monotonic() - started

    assert result.exit_code == 3, result.output
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    assert "password authentication failed" in lines[0]
    assert f"payout:***@127.0.0.1:{refusing_server.port}/test" in lines[0]
    assert PASSWORD not in result.output
    assert "Traceback" not in result.output
    assert elapsed < 5


@EVERY_COMMAND
def test_an_unreachable_host_is_one_line_exit_3(command: str) -> None:
    """Nothing listening: the cause at once, not after the pool's 10 s."""
    url = f"postgresql://payout:{PASSWORD}@127.0.0.1:{_closed_port()}/test"

    started = time.monotonic()
    result = _run(command, _env(url))

    assert result.exit_code == 3, result.output
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    assert "refused" in lines[0].lower()
    assert PASSWORD not in result.output
    assert time.monotonic() - started < 5


def test_a_silent_host_waits_only_the_connect_timeout() -> None:
    """A host that accepts and never answers: postgres_connect_timeout, then exit 3."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"postgresql://payout@127.0.0.1:{silent.getsockname()[1]}/test"

        started = time.monotonic()
        result = _run("audit", _env(url, PAYOUT_LEDGER_POSTGRES_CONNECT_TIMEOUT="2"))

    assert result.exit_code == 3, result.output
    assert "timeout" in result.stderr.lower()
    assert time.monotonic() - started < 8


@pytest.mark.postgres
@EVERY_COMMAND
def test_a_missing_database_is_one_line_exit_3(command: str, postgres_server_url: str) -> None:
    """A database that does not exist: PostgreSQL's own words."""
    parts = urlsplit(postgres_server_url)  # the embedded server's URL has ?host=/socket/dir
    url = urlunsplit(parts._replace(path="/no_such_database_here"))

    result = _run(command, _env(url))

    assert result.exit_code == 3, result.output
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    assert 'database "no_such_database_here" does not exist' in lines[0]


@pytest.mark.postgres
@EVERY_COMMAND
def test_a_missing_schema_is_one_line_exit_3(command: str, postgres_server_url: str) -> None:
    """A ?schema= that does not exist."""
    url = with_query(postgres_server_url, schema="no_such_schema_here")

    result = _run(command, _env(url))

    assert result.exit_code == 3, result.output
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    assert 'schema "no_such_schema_here" does not exist' in lines[0]


@pytest.mark.postgres
@pytest.mark.parametrize(
    "schema", ["my-payouts", "pay outs", 'pay"outs', "user", "select", "between", "int"]
)
def test_a_schema_name_that_needs_quoting_is_refused_as_configuration(
    schema: str, postgres_server_url: str
) -> None:
    """A schema (that exists) whose name SQL must quote: a hyphen, a space, a double
    quote, a reserved word, a keyword that names no type. The event store names its
    schema unquoted, so the ledger could not work there: a configuration error that
    says so, exit 2, nothing created in the schema."""
    with schema_of_its_own(postgres_server_url, schema) as url:
        result = _run("audit", _env(url))
        with psycopg.connect(postgres_server_url) as conn:
            created = conn.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s",
                (schema,),
            ).fetchone()

    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    assert f"the schema {schema!r} needs quoting in SQL" in lines[0]
    assert "syntax error" not in result.output
    assert created == (0,)


@pytest.mark.postgres
@pytest.mark.parametrize("schema", ["Payouts_Mixed", "payouts_ü", "abort", "left"])
def test_a_schema_name_used_unquoted_opens(
    schema: str, postgres_server_url: str, providers: InMemoryProviderDirectory
) -> None:
    """Capitals (folded), letters beyond ASCII, an unreserved keyword and a keyword
    that may name a type name a schema the ledger works in."""
    with schema_of_its_own(postgres_server_url, schema) as url:
        settings = LedgerSettings(store_url=url, stripe_enabled=False)
        with PayoutLedger(settings=settings, providers=providers,
                          gateway=InMemoryTransferGateway()) as ledger:  # fmt: skip
            assert ledger.release_payment(release("es_schema")).success


@EVERY_COMMAND
def test_an_unreadable_sqlite_file_is_one_line_exit_3(command: str, tmp_path: Path) -> None:
    """A file that is no SQLite database: sqlite3's message, exit 3."""
    path = tmp_path / "notes.db"
    path.write_text("these are not the payouts you are looking for\n" * 200)

    result = _run(command, _env(f"sqlite:///{path}"))

    assert result.exit_code == 3, result.output
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    assert "file is not a database" in lines[0]
    assert str(path) in lines[0]


def test_an_unwritable_export_path_is_one_line_exit_2(tmp_path: Path) -> None:
    """export -o into a folder that does not exist: the path and the reason, exit 2."""
    store = tmp_path / "ops.db"
    with _ledger(f"sqlite:///{store}") as ledger:
        ledger.release_payment(release("es_1"))
    target = tmp_path / "missing" / "out.jsonl"

    result = CliRunner().invoke(app, ["export", "-o", str(target)], env=_env(f"sqlite:///{store}"))

    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    assert str(target) in lines[0] and "No such file or directory" in lines[0]


@EVERY_COMMAND
def test_a_bad_setting_names_the_variable_and_the_reason_not_the_value(command: str) -> None:
    """Pydantic's errors, formatted: the variable and why, never the value (it may be secret)."""
    env = _env("memory://", PAYOUT_LEDGER_STRIPE_TIMEOUT="-98765")

    result = _run(command, env)

    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result)
    assert line.startswith("error: configuration: ")
    assert re.search(r"PAYOUT_LEDGER_STRIPE_TIMEOUT\)?: Input should be greater than 0$", line)
    assert "98765" not in result.output
    assert "validation error" not in result.output


def test_several_bad_settings_are_each_named() -> None:
    """Every invalid setting is listed, each by its variable."""
    env = _env(
        "memory://",
        PAYOUT_LEDGER_STRIPE_TIMEOUT="-5",
        PAYOUT_LEDGER_CLAIM_ATTEMPTS="many",
    )

    result = _run("audit", env)

    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result)
    assert re.search(r"PAYOUT_LEDGER_STRIPE_TIMEOUT\)?: Input should be greater than 0", line)
    assert re.search(r"PAYOUT_LEDGER_CLAIM_ATTEMPTS\)?: Input should be a valid integer", line)
    assert "many" not in line


def test_reconcile_exits_3_when_stripe_cannot_be_asked(tmp_path: Path) -> None:
    """A store that opens and a Stripe that does not answer: cannot run, exit 3."""
    store = f"sqlite:///{tmp_path / 'ops.db'}"
    with _ledger(store) as ledger:
        ledger.release_payment(release("es_1"))

    result = _run("reconcile", _env(store))

    assert result.exit_code == 3, result.output
    assert len(_error_lines(result)) == 1, result.stderr


def test_the_library_raises_store_errors_not_driver_errors(
    refusing_server: _PasswordRefusingServer, tmp_path: Path
) -> None:
    """PayoutLedger construction wraps psycopg's and sqlite3's failures in StoreError."""
    url = f"postgresql://payout:{PASSWORD}@127.0.0.1:{refusing_server.port}/test"
    with pytest.raises(StoreUnavailableError) as refused:
        _ledger(url, postgres_connect_timeout=2)
    message = str(refused.value)
    assert "password authentication failed" in message
    assert f"payout:***@127.0.0.1:{refusing_server.port}" in message
    assert PASSWORD not in message and "\n" not in message
    assert isinstance(refused.value, StoreError)
    assert isinstance(refused.value, PayoutLedgerError)
    assert not isinstance(refused.value, psycopg.Error | ValueError)

    with pytest.raises(StoreUnavailableError, match="refused"):
        _ledger(f"postgresql://payout@127.0.0.1:{_closed_port()}/test")

    folder = tmp_path / "a-folder.db"
    folder.mkdir()
    with pytest.raises(StoreUnavailableError, match="unable to open database file"):
        _ledger(f"sqlite:///{folder}")


# Finding 4: read-only commands never create a store.


@EVERY_COMMAND
def test_no_command_creates_a_missing_sqlite_store(command: str, tmp_path: Path) -> None:
    """A misspelt path is an error (exit 3) naming the URL; no file appears."""
    path = tmp_path / "opps.db"

    result = _run(command, _env(f"sqlite:///{path}"))

    assert result.exit_code == 3, result.output
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    assert f"sqlite:///{path}" in lines[0] and "does not exist" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_an_unset_store_url_says_the_default_was_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PAYOUT_LEDGER_STORE_URL unset: the default file is not created, and the line says why."""
    monkeypatch.chdir(tmp_path)
    env = _env("unused")
    env["PAYOUT_LEDGER_STORE_URL"] = None  # type: ignore[assignment]  # CliRunner unsets it

    result = CliRunner().invoke(app, ["audit"], env=env)

    assert result.exit_code == 3, result.output
    assert "PAYOUT_LEDGER_STORE_URL is not set" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgres
@EVERY_COMMAND
def test_no_command_creates_the_events_table_in_an_empty_schema(
    command: str, postgres_url: str
) -> None:
    """An existing but empty schema is no store: exit 3, and no table is created in it."""
    result = _run(command, _env(postgres_url))

    assert result.exit_code == 3, result.output
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    assert "payoutledger_events" in lines[0] and "does not exist" in lines[0]
    schema = dict(p.split("=") for p in postgres_url.split("?", 1)[1].split("&"))["schema"]
    conninfo = postgres_url.split("?", 1)[0]
    with psycopg.connect(conninfo) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchone()
    assert tables == (0,)


def test_the_library_opens_only_an_existing_store_when_asked(tmp_path: Path) -> None:
    """must_exist=True: StoreNotFoundError, and nothing is created; then it opens the store."""
    url = f"sqlite:///{tmp_path / 'payouts.db'}"
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        _ledger(url, must_exist=True)
    assert list(tmp_path.iterdir()) == []

    with _ledger(url) as ledger:
        ledger.release_payment(release("es_1"))
    with _ledger(url, must_exist=True) as ledger:
        assert ledger.find_payout("es_1") is not None


@pytest.mark.postgres
def test_the_library_finds_no_events_table_in_an_empty_schema(postgres_url: str) -> None:
    """must_exist=True on PostgreSQL: the events table must be in the schema."""
    with pytest.raises(StoreNotFoundError, match="payoutledger_events"):
        _ledger(postgres_url, must_exist=True)
    with _ledger(postgres_url) as ledger:
        ledger.release_payment(release("es_1"))
    with _ledger(postgres_url, must_exist=True) as ledger:
        assert ledger.find_payout("es_1") is not None


def _ledger(url: str, *, must_exist: bool = False, **settings: object) -> PayoutLedger:
    return PayoutLedger(
        settings=LedgerSettings(store_url=url, **settings),  # type: ignore[arg-type]
        providers=InMemoryProviderDirectory([ALICE]),
        gateway=InMemoryTransferGateway(),
        must_exist=must_exist,
    )


def test_every_help_lists_the_exit_codes() -> None:
    """`--help` of the program and of each command says what each exit code means."""
    for args in (["--help"], *([argv[0], "--help"] for argv in COMMANDS.values())):
        result = CliRunner().invoke(app, args, env={"COLUMNS": "100"})

        assert result.exit_code == 0, result.output
        text = " ".join(result.output.split())
        assert "Exit codes: 0 ok; 1 findings" in text, args
        assert "2 usage or configuration; 3 the store or Stripe cannot be reached" in text, args
