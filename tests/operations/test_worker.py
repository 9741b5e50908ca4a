"""The maintenance worker's cycle: each step, its threshold, its anchors, its isolation."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from payout_ledger import (
    ConfigurationError,
    LedgerSettings,
    PayoutLedger,
    TransferOutcomeUnknown,
)
from payout_ledger.adapters.anchor import CommandAnchorSink, FileAnchorSink
from payout_ledger.audit import verify_ledger
from payout_ledger.service.worker import MaintenanceWorker, WorkerCycle
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.support import ALICE, MovableClock, SlowHostClock, release

HOUR = 3600


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def ledger(durable_store_url: str, gateway: InMemoryTransferGateway, clock: MovableClock) -> Any:
    made = PayoutLedger(
        settings=LedgerSettings(store_url=durable_store_url, postgres_pool_size=2),
        providers=InMemoryProviderDirectory([ALICE]),
        gateway=gateway,
        clock=clock,
    )
    yield made
    made.close()


@pytest.fixture
def worker(ledger: PayoutLedger) -> Any:
    made = MaintenanceWorker(ledger, resume_after=300, lease_seconds=3)
    yield made
    made.close()


def lost_answer(ledger: PayoutLedger, gateway: InMemoryTransferGateway, service: str) -> None:
    """A release whose transfer Stripe made but whose answer was lost: in flight."""
    gateway.fail_next(TransferOutcomeUnknown("timeout"), after_commit=True)
    assert ledger.release_payment(release(service)).in_flight


def test_only_claims_older_than_the_threshold_are_resumed(
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    clock: MovableClock,
    worker: MaintenanceWorker,
) -> None:
    """A fresh claim (a release still running) is left alone; an old one is settled."""
    lost_answer(ledger, gateway, "es_old")
    clock.advance(301)
    lost_answer(ledger, gateway, "es_new")

    cycle = worker.run_once()

    assert cycle.leading
    assert (cycle.resumed, cycle.settled, cycle.not_yet_due) == (1, 1, 0 + 1)
    assert cycle.outcomes == {"released": 1}
    assert ledger.in_flight() == ["es_new"]
    clock.advance(301)

    cycle = worker.run_once()

    assert (cycle.resumed, cycle.settled, cycle.not_yet_due) == (1, 1, 0)
    assert ledger.in_flight() == []
    assert len(gateway.transfers_for("es_old")) == len(gateway.transfers_for("es_new")) == 1
    assert cycle.ok, cycle.findings


def test_a_payout_stripe_still_does_not_answer_is_a_finding(
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    clock: MovableClock,
    worker: MaintenanceWorker,
) -> None:
    gateway.fail_next(TransferOutcomeUnknown("timeout"))
    ledger.release_payment(release("es_1"))
    clock.advance(HOUR)
    gateway.fail_next_lookup(TransferOutcomeUnknown("Stripe is down"))

    cycle = worker.run_once()

    assert cycle.still_in_flight == ["es_1"]
    assert not cycle.ok
    assert cycle.result == "findings"
    assert "1 payouts still in flight after resume" in cycle.findings


def test_old_reversals_in_flight_are_resumed_and_fresh_ones_left(
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    clock: MovableClock,
    worker: MaintenanceWorker,
) -> None:
    for service in ("es_1", "es_2"):
        assert ledger.release_payment(release(service)).success
    gateway.fail_next(TransferOutcomeUnknown("timeout"), after_commit=True)
    assert ledger.reverse_payment("es_1").in_flight
    clock.advance(301)
    gateway.fail_next(TransferOutcomeUnknown("timeout"), after_commit=True)
    assert ledger.reverse_payment("es_2").in_flight

    cycle = worker.run_once()

    assert (cycle.reversals_resumed, cycle.reversals_settled) == (1, 1)
    assert cycle.reversals_not_yet_due == 1
    assert ledger.reversals_in_flight() == ["es_2"]
    assert len(gateway.reversals) == 2  # each made once, es_1's found and recorded


def test_reconcile_reports_what_stripe_disagrees_with(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, worker: MaintenanceWorker
) -> None:
    paid = ledger.release_payment(release("es_1"))
    assert paid.transfer_id is not None
    gateway.reverse(paid.transfer_id)  # behind the ledger's back

    cycle = worker.run_once()

    assert cycle.reconciled and cycle.payouts_checked == 1
    assert [m.kind.value for m in cycle.mismatches] == ["reversed"]
    assert "1 reconcile mismatches" in cycle.findings


def test_reconcile_window_leaves_older_transfers_out(
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    clock: MovableClock,
    worker: MaintenanceWorker,
) -> None:
    assert ledger.release_payment(release("es_1")).success

    within = worker.run_once()
    clock.advance(27 * HOUR)
    past = worker.run_once()

    assert within.payouts_checked == 1
    assert past.reconciled and past.payouts_checked == 0  # the last 26 hours by default


def test_a_transfer_of_an_attempt_in_flight_is_not_a_mismatch(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, worker: MaintenanceWorker
) -> None:
    """Stripe has the transfer of a fresh claim: the lost answer resume will record."""
    lost_answer(ledger, gateway, "es_1")

    cycle = worker.run_once()

    assert cycle.not_yet_due == 1
    assert cycle.mismatches == []
    assert cycle.awaiting_resume == 1
    assert cycle.ok


def test_the_read_model_is_brought_up_to_date(
    ledger: PayoutLedger, worker: MaintenanceWorker
) -> None:
    ledger.release_payment(release("es_1"))

    first = worker.run_once()
    second = worker.run_once()

    assert first.events_projected == 3  # started, succeeded, released
    assert second.events_projected == 0


def test_the_log_is_sealed_when_something_new_was_recorded(
    ledger: PayoutLedger, worker: MaintenanceWorker
) -> None:
    ledger.release_payment(release("es_1"))

    first = worker.run_once()
    again = worker.run_once()
    ledger.release_payment(release("es_2"))
    after_more = worker.run_once()

    assert first.seal is not None and first.seal.seal_number == 1
    assert again.seal is None  # only the seal itself came after the seal
    assert after_more.seal is not None and after_more.seal.seal_number == 2


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_seal_is_anchored_once_in_the_file_and_verify_finds_it(
    ledger: PayoutLedger, tmp_path: Path
) -> None:
    anchors = tmp_path / "anchors.jsonl"
    with MaintenanceWorker(ledger, sink=FileAnchorSink(anchors)) as worker:
        ledger.release_payment(release("es_1"))
        worker.run_once()
        worker.run_once()
        ledger.release_payment(release("es_2"))
        cycle = worker.run_once()

    lines = read_lines(anchors)
    assert [line["seal_number"] for line in lines] == [1, 2]
    assert set(lines[0]) == {"seal_number", "through_notification_id", "seal_digest", "sealed_at"}
    assert cycle.anchored == [2]
    report = verify_ledger(ledger, anchors=[line["seal_digest"] for line in lines])
    assert report.ok and len(report.anchors_found) == 2


def test_a_seal_not_anchored_is_anchored_at_a_later_cycle(
    ledger: PayoutLedger, tmp_path: Path
) -> None:
    """The file cannot be written: a finding; once it can, every missing seal goes in."""
    folder = tmp_path / "worm"
    sink = FileAnchorSink(folder / "anchors.jsonl")
    with MaintenanceWorker(ledger, sink=sink) as worker:
        ledger.release_payment(release("es_1"))
        failed = worker.run_once()
        ledger.release_payment(release("es_2"))
        worker.run_once()
        folder.mkdir()
        caught_up = worker.run_once()

    assert failed.seal is not None and failed.anchored == []
    assert "anchor" in failed.errors and not failed.ok
    assert caught_up.anchored == [1, 2]
    assert [line["seal_number"] for line in read_lines(folder / "anchors.jsonl")] == [1, 2]


ANCHOR_COMMAND = """
import pathlib, sys
here = pathlib.Path(sys.argv[1])
if (here / "refuse").exists():
    print("no space left", file=sys.stderr)
    sys.exit(3)
with (here / "received.jsonl").open("a") as f:
    f.write(sys.stdin.read())
"""


def test_the_anchor_command_gets_each_seal_and_its_failure_is_retried(
    ledger: PayoutLedger, tmp_path: Path
) -> None:
    (tmp_path / "refuse").touch()
    sink = CommandAnchorSink([sys.executable, "-c", ANCHOR_COMMAND, str(tmp_path)])
    with MaintenanceWorker(ledger, sink=sink) as worker:
        ledger.release_payment(release("es_1"))
        failed = worker.run_once()
        (tmp_path / "refuse").unlink()
        retried = worker.run_once()
        nothing_new = worker.run_once()

    assert failed.seal is not None and failed.anchored == []
    assert "exited with status 3: no space left" in failed.errors["anchor"]
    assert retried.seal is None and retried.anchored == [1]
    assert nothing_new.anchored == []
    [received] = read_lines(tmp_path / "received.jsonl")
    assert received["seal_digest"] == failed.seal.seal_digest


def test_a_failing_step_does_not_stop_the_others(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, worker: MaintenanceWorker
) -> None:
    ledger.release_payment(release("es_1"))
    gateway.fail_next_lookup(TransferOutcomeUnknown("Stripe is down"))

    cycle = worker.run_once()

    assert list(cycle.errors) == ["reconcile"]
    assert "Stripe is down" in cycle.errors["reconcile"]
    assert cycle.events_projected == 3 and cycle.seal is not None
    assert not cycle.ok


def test_a_follower_does_nothing_until_the_leader_steps_down(
    ledger: PayoutLedger, durable_store_url: str, worker: MaintenanceWorker
) -> None:
    ledger.release_payment(release("es_1"))
    other_ledger = PayoutLedger(
        settings=LedgerSettings(store_url=durable_store_url, postgres_pool_size=2),
        providers=InMemoryProviderDirectory([ALICE]),
        gateway=InMemoryTransferGateway(),
    )
    try:
        with MaintenanceWorker(other_ledger) as follower:
            assert worker.run_once().leading
            idle = follower.run_once()
            worker.step_down()
            took_over = follower.run_once()
    finally:
        other_ledger.close()

    assert not idle.leading and idle.result == "follower" and idle.ok
    assert idle.events_projected == 0 and idle.seal is None
    assert took_over.leading


def test_stopping_ends_the_cycle_between_two_payouts(
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    clock: MovableClock,
    worker: MaintenanceWorker,
) -> None:
    stop = threading.Event()
    for service in ("es_1", "es_2"):
        gateway.fail_next(TransferOutcomeUnknown("timeout"))
        ledger.release_payment(release(service))
    clock.advance(HOUR)
    asked = gateway.list_transfers

    def list_then_stop(**kwargs: Any) -> Any:
        stop.set()  # the signal arrives while the first payout is being resumed
        return asked(**kwargs)

    gateway.list_transfers = list_then_stop  # type: ignore[method-assign]

    cycle = worker.run_once(stop)

    assert cycle.resumed == 1 and cycle.interrupted == "stopped"
    assert cycle.seal is None  # the later steps did not run
    assert len(ledger.in_flight()) == 1


def test_run_cycles_until_stopped_and_releases_the_lock(
    ledger: PayoutLedger, durable_store_url: str
) -> None:
    stop = threading.Event()
    cycles: list[WorkerCycle] = []

    def on_cycle(cycle: WorkerCycle) -> None:
        cycles.append(cycle)
        if len(cycles) == 3:
            stop.set()

    worker = MaintenanceWorker(ledger, interval=0.05, lease_seconds=3)
    runner = threading.Thread(target=worker.run, args=(stop,), kwargs={"on_cycle": on_cycle})
    runner.start()
    runner.join(60)

    assert not runner.is_alive()
    assert len(cycles) == 3 and all(c.leading for c in cycles)
    assert not worker.leading
    with MaintenanceWorker(ledger) as next_worker:
        assert next_worker.try_lead()


def test_memory_store_worker_leads_and_skips_the_read_model(
    gateway: InMemoryTransferGateway,
) -> None:
    with PayoutLedger(
        settings=LedgerSettings(store_url="memory://"),
        providers=InMemoryProviderDirectory([ALICE]),
        gateway=gateway,
    ) as ledger:
        ledger.release_payment(release("es_1"))
        with MaintenanceWorker(ledger) as worker:
            cycle = worker.run_once()
    assert cycle.leading and cycle.ok, cycle.errors
    assert cycle.seal is not None and cycle.events_projected == 0


def test_without_stripe_reconcile_is_off(sqlite_url: str) -> None:
    with PayoutLedger(
        settings=LedgerSettings(store_url=sqlite_url, stripe_enabled=False),
        providers=InMemoryProviderDirectory([ALICE]),
    ) as ledger:
        ledger.release_payment(release("es_1"))
        with MaintenanceWorker(ledger) as worker:
            cycle = worker.run_once()
    assert not cycle.reconciled and cycle.ok, cycle.errors


def test_worker_overrides_are_checked(ledger: PayoutLedger) -> None:
    with pytest.raises(ConfigurationError, match="interval"):
        MaintenanceWorker(ledger, interval=0)
    with pytest.raises(ConfigurationError, match="resume_after"):
        MaintenanceWorker(ledger, resume_after=-1)


@pytest.mark.parametrize(
    "sink",
    ["s3cr3t-token-x", "file:", "command:", "command:'unclosed s3cr3t-token-x", "ftp:/x"],
)
def test_a_bad_anchor_sink_is_refused_without_its_value(sink: str) -> None:
    with pytest.raises(ConfigurationError, match="worker_anchor_sink") as raised:
        LedgerSettings(store_url="memory://", worker_anchor_sink=sink)
    assert "s3cr3t" not in str(raised.value)


def test_the_anchor_command_arguments_never_show() -> None:
    settings = LedgerSettings(
        store_url="memory://", worker_anchor_sink="command:/usr/bin/anchor --token s3cr3t-tok"
    )
    shown = [repr(settings), str(settings), settings.model_dump_json()]
    assert all("s3cr3t-tok" not in text for text in shown)
    assert "command:/usr/bin/anchor ***" in repr(settings)


def test_a_sink_ahead_of_the_log_is_a_finding(ledger: PayoutLedger, tmp_path: Path) -> None:
    """The sink holds a seal the log does not have: seals were removed (or another store's)."""
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(json.dumps({"seal_number": 5, "seal_digest": "ab" * 32}) + "\n")
    ledger.release_payment(release("es_1"))
    with MaintenanceWorker(ledger, sink=FileAnchorSink(anchors)) as worker:
        cycle = worker.run_once()
    assert "holds seal #5 but the log's newest seal is #1" in cycle.errors["anchor"]
    assert cycle.anchored == []


def test_a_rewritten_seal_is_noticed_against_the_sink(ledger: PayoutLedger, tmp_path: Path) -> None:
    anchors = tmp_path / "anchors.jsonl"
    ledger.release_payment(release("es_1"))
    with MaintenanceWorker(ledger, sink=FileAnchorSink(anchors)) as worker:
        assert worker.run_once().anchored == [1]
        [line] = read_lines(anchors)
        anchors.write_text(json.dumps({**line, "seal_digest": "0" * 64}) + "\n")
        cycle = worker.run_once()
    assert "its digest differs" in cycle.errors["anchor"]
    assert not cycle.ok


ENVIRONMENT_COMMAND = """
import json, os, pathlib, sys
pathlib.Path(sys.argv[1]).write_text(json.dumps(sorted(os.environ)))
"""


def test_the_anchor_command_does_not_get_the_ledgers_secrets(
    ledger: PayoutLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYOUT_LEDGER_STRIPE_API_KEY", "sk_test_not_for_the_command")
    monkeypatch.setenv("ANCHOR_OWN_SETTING", "kept")
    seen = tmp_path / "environment.json"
    ledger.release_payment(release("es_1"))
    sink = CommandAnchorSink([sys.executable, "-c", ENVIRONMENT_COMMAND, str(seen)])
    with MaintenanceWorker(ledger, sink=sink) as worker:
        assert worker.run_once().anchored == [1]
    names = json.loads(seen.read_text())
    assert "ANCHOR_OWN_SETTING" in names
    assert not [name for name in names if name.startswith("PAYOUT_LEDGER_")]


@pytest.mark.postgres
def test_a_step_error_never_shows_the_store_password(
    postgres_url: str, gateway: InMemoryTransferGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = urlsplit(postgres_url)
    user = parts.netloc.split("@")[0].split(":")[0]
    host = parts.netloc.split("@")[1]
    with_password = parts._replace(netloc=f"{user}:pw-s3cr3t@{host}").geturl()
    assert "pw-s3cr3t" in with_password  # the test servers trust any password

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("could not reach postgres:pw-s3cr3t@db")

    monkeypatch.setattr("payout_ledger.service.worker.reconcile", failing)
    with (
        PayoutLedger(
            settings=LedgerSettings(store_url=with_password, postgres_pool_size=2),
            providers=InMemoryProviderDirectory([ALICE]),
            gateway=gateway,
        ) as ledger,
        MaintenanceWorker(ledger) as worker,
    ):
        cycle = worker.run_once()
    assert cycle.errors["reconcile"] == "RuntimeError: could not reach postgres:***@db"
    assert "pw-s3cr3t" not in json.dumps(cycle.as_dict()) + cycle.summary()


def test_a_worker_whose_clock_is_hours_behind_still_resumes_within_the_threshold(
    durable_store_url: str, ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """The claim's age by two hosts' clocks is not what makes a payout due: a claim
    this worker has seen in flight for ``resume_after`` on its own monotonic clock is."""
    lost_answer(ledger, gateway, "es_1")  # claimed on a host whose clock is right
    slow = SlowHostClock()
    with (
        PayoutLedger(
            settings=LedgerSettings(store_url=durable_store_url, postgres_pool_size=2),
            providers=InMemoryProviderDirectory([ALICE]),
            gateway=gateway,
            clock=slow,
        ) as worker_ledger,
        MaintenanceWorker(worker_ledger, resume_after=300, lease_seconds=3) as worker,
    ):
        assert worker.run_once().not_yet_due == 1  # fresh, as far as anyone can tell
        slow.advance(299)
        assert worker.run_once().not_yet_due == 1
        slow.advance(2)
        cycle = worker.run_once()
    assert (cycle.resumed, cycle.settled) == (1, 1)
    assert ledger.in_flight() == []
    assert len(gateway.transfers_for("es_1")) == 1
