"""``payout-ledger worker``: the maintenance worker, looping or one cycle (``--once``).

Start it on every host: on one store only the worker holding the leader lock
works, and another takes over within ``worker_lease_seconds`` of its death.
SIGTERM or SIGINT ends it cleanly: the current step stops between two payouts,
the lock is released, and it exits 0 (a second signal leaves at once, which is
safe too: an interrupted payout stays in flight for the next resume).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType
from typing import Annotated, Any, TypeVar

import typer

from payout_ledger.cli.opening import StoreOption, operator_ledger
from payout_ledger.cli.root import EXIT_CODES_HELP, EXIT_FINDINGS, app, exit_codes, fail
from payout_ledger.service.worker import MaintenanceWorker, WorkerCycle

_LIBRARY_LOGGER = "payout_ledger"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
T = TypeVar("T")


@app.command("worker", epilog=EXIT_CODES_HELP)
@exit_codes
def worker_command(
    once: Annotated[
        bool, typer.Option("--once", help="Run one cycle (if leading), then exit: for a scheduler.")
    ] = False,
    interval: Annotated[
        float | None,
        typer.Option(min=0.05, help="Seconds between cycles (PAYOUT_LEDGER_WORKER_INTERVAL)."),
    ] = None,
    resume_after: Annotated[
        float | None,
        typer.Option(
            min=0, help="Resume claims older than this (PAYOUT_LEDGER_WORKER_RESUME_AFTER)."
        ),
    ] = None,
    reconcile_window: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Seconds back to reconcile, 0: off (PAYOUT_LEDGER_WORKER_RECONCILE_WINDOW).",
        ),
    ] = None,
    lease_seconds: Annotated[
        float | None,
        typer.Option(
            min=1, help="Replace a dead leader within this (PAYOUT_LEDGER_WORKER_LEASE_SECONDS)."
        ),
    ] = None,
    json_logs: Annotated[
        bool, typer.Option("--json-logs", help="Log one JSON object per line on stderr.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --once: print the cycle as JSON.")
    ] = False,
    store_url: StoreOption = None,
) -> None:
    """Resume stuck payouts, reconcile, project, seal and anchor, while leading the store.

    Exit 0 when stopped by SIGTERM or SIGINT; with --once, 0 for a clean cycle (or
    another worker leads) and 1 for findings.
    """
    if as_json and not once:
        fail("--json prints one cycle: use it with --once")
    # From the start: a SIGTERM while the store opens stops the worker before its loop.
    with (
        _StopSignals() as signals,
        _library_logging(json_logs),
        operator_ledger(store_url) as ledger,
    ):
        worker = MaintenanceWorker(
            ledger,
            interval=interval,
            resume_after=resume_after,
            reconcile_window=reconcile_window,
            lease_seconds=lease_seconds,
        )
        if not once:
            _until_signalled(lambda stop: worker.run(stop, on_cycle=_print_cycle), signals)
            typer.echo(f"{_now()} stopped")
            return
        try:
            cycle = _until_signalled(worker.run_once, signals)
        finally:
            worker.close()
    if cycle is not None:  # None: a second signal left it unfinished
        _print_once(cycle, as_json)


def _print_once(cycle: WorkerCycle, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(cycle.as_dict(), indent=2, default=str))
    else:
        typer.echo(cycle.summary())
    if cycle.findings:
        if as_json:
            raise typer.Exit(EXIT_FINDINGS)
        fail("; ".join(cycle.findings), EXIT_FINDINGS)


class _StopSignals:
    """While the command runs, SIGTERM and SIGINT set ``stop`` (and are counted).

    The handler runs in the main thread, which never waits on ``stop`` itself
    (the work runs in another thread), so setting it cannot deadlock.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.count = 0
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.stop.set()

    def __enter__(self) -> _StopSignals:
        self._previous = {s: signal.signal(s, self._on_signal) for s in _STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _until_signalled(job: Callable[[threading.Event], T], signals: _StopSignals) -> T | None:
    """Run ``job(stop)`` in a thread while the main thread waits for it and for signals.

    The first signal sets ``stop`` (the job ends between two payouts); a second
    one gives up waiting and returns None.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            outcome.append(job(signals.stop))
        except BaseException as exc:  # handed to the main thread for its exit code
            failure.append(exc)

    thread = threading.Thread(target=work, name="payout-ledger-worker", daemon=True)
    thread.start()
    while thread.is_alive() and signals.count < 2:
        thread.join(0.2)
    if failure:
        raise failure[0]
    if thread.is_alive():
        logging.getLogger("payout_ledger.worker").warning(
            "second signal: leaving without finishing the current step"
        )
        return None
    return outcome[0]


def _print_cycle(cycle: WorkerCycle) -> None:
    typer.echo(f"{_now()} {cycle.summary()}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and ``payout_ledger.*`` extras."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key.startswith(_LIBRARY_LOGGER + "."):
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


@contextmanager
def _library_logging(as_json: bool) -> Iterator[None]:
    """The library's log records at INFO on stderr while the command runs."""
    library = logging.getLogger(_LIBRARY_LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLogFormatter()
        if as_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    level = library.level
    library.addHandler(handler)
    library.setLevel(logging.INFO)
    try:
        yield
    finally:
        library.removeHandler(handler)
        library.setLevel(level)
