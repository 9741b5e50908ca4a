"""The ``payout-ledger`` typer app: its root, ``--version`` and exit codes.

A command that cannot run prints one ``error:`` line on stderr and exits with
the code that says why; :func:`exit_codes` maps what stops a command to it.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Annotated, NoReturn, ParamSpec, TypeVar

import psycopg
import typer
from eventsourcing.persistence import PersistenceError
from rich.text import Text

from payout_ledger import __version__
from payout_ledger.cli.output import stderr_console
from payout_ledger.errors import (
    ConfigurationError,
    GatewayError,
    InvalidRequestError,
    LedgerBusyError,
    PayoutLedgerError,
    StoreError,
)

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 findings (violations, tampering, mismatches, unreadable "
    "events, payouts still in flight); 2 usage or configuration; 3 the store or "
    "Stripe cannot be reached or opened; 130 interrupted."
)

app = typer.Typer(
    help="Release marketplace payments through Stripe Connect, exactly once.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    # Plain usage errors and help: rich's boxes cut messages to the terminal's width.
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"payout-ledger {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    """Release marketplace payments through Stripe Connect, exactly once."""


# Failing: one line, and an exit code that says whether the command could run.


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    stderr_console().print(Text.assemble(("error:", "red"), " ", message), crop=False)
    raise typer.Exit(code)


def first_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return text or type(exc).__name__


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


P = ParamSpec("P")
R = TypeVar("R")


def exit_codes(command: Callable[P, R]) -> Callable[P, R]:
    """Turn what stops a command into one line on stderr and its documented exit code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except StoreError as exc:
            fail(first_line(exc), EXIT_UNAVAILABLE)
        except GatewayError as exc:
            # Stripe answered 401/403: the key is wrong, a configuration error.
            refused = exc.http_status in (401, 403)
            fail(f"Stripe: {first_line(exc)}", EXIT_USAGE if refused else EXIT_UNAVAILABLE)
        except LedgerBusyError as exc:
            fail(first_line(exc), EXIT_UNAVAILABLE)
        except (PersistenceError, psycopg.Error, sqlite3.Error) as exc:
            fail(f"store: {first_line(_root_cause(exc))}", EXIT_UNAVAILABLE)
        except ConfigurationError as exc:
            fail(f"configuration: {first_line(exc)}", EXIT_USAGE)
        except InvalidRequestError as exc:
            fail(f"refused, nothing recorded: {first_line(exc)}", EXIT_USAGE)
        except PayoutLedgerError as exc:
            fail(first_line(exc), EXIT_FINDINGS)

    return run
