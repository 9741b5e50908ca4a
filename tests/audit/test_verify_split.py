"""Verify in two processes: the same report as the one pass, or the one pass.

``verify_ledger(processes=2)`` checks the events after a seal here and those
up to it in a second process. Each test compares its report with the one
pass's, field by field (but ``processes``, which says which was made), on
clean and tampered logs, with chain heads kept and with every head let go.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.cryptography import AESCipher
from pydantic import SecretStr
from typer.testing import CliRunner

from payout_ledger import InvalidRequestError, LedgerSettings, PayoutAggregate, PayoutLedger
from payout_ledger.audit import ProblemKind, verify_ledger
from payout_ledger.audit import verify_split as split_module
from payout_ledger.audit.stored import SeenFilter
from payout_ledger.audit.verify_split import FirstPartResult, first_seen_before
from payout_ledger.cli import app
from payout_ledger.testing import InMemoryTransferGateway
from tests.audit.scenario import deliver, release, run_scenario, transfer_event
from tests.audit.support import RawStore, notification_ids


@pytest.fixture
def store_url(durable_store_url: str) -> str:
    return durable_store_url


@pytest.fixture(autouse=True)
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split logs of a few dozen events (a real log splits from 200,000 on each side)."""
    monkeypatch.setattr(split_module, "SPLIT_SMALLEST", 1)


def same(report: Any) -> dict[str, Any]:
    found = dict(report.as_dict())
    found.pop("processes")
    found.pop("checkpoint")
    found.pop("incremental")
    return found


def two_sealed_halves(ledger: PayoutLedger, gateway: InMemoryTransferGateway) -> int:
    """A log of two halves, each sealed, then a few unsealed events: it splits at the
    first seal (the one nearest the middle that is not the last), whose position is
    returned."""
    run_scenario(ledger, gateway, prefix="a_")
    first = ledger.seal()
    run_scenario(ledger, gateway, prefix="b_")
    ledger.release_payment(release("a_es_inflight", amount=1200))  # started before the seal
    ledger.seal()
    ledger.release_payment(release("c_es_unsealed", amount=100))
    return first.through_notification_id


def reverse(ledger: PayoutLedger, gateway: InMemoryTransferGateway, event_service_id: str) -> int:
    """Reverse a payout's transfer, as Stripe reports it: its new event's id."""
    [paid] = gateway.transfers_for(event_service_id)
    whole = gateway.reverse(paid.transfer_id)
    event = transfer_event(
        f"evt_rev_{event_service_id}", "transfer.reversed", whole, whole.amount_reversed
    )
    deliver(ledger, event)
    return max(notification_ids(ledger, ledger.payout_id(event_service_id)))


def tamper(raw: RawStore, ledger: PayoutLedger, event_service_id: str) -> int:
    ids = notification_ids(ledger, ledger.payout_id(event_service_id))
    [succeeded] = [i for i in ids if raw.row(i).topic == PayoutAggregate.TransferSucceeded.TOPIC]

    def change(state: dict[str, Any]) -> None:
        state["amount"] += 1

    raw.edit(succeeded, change)
    return succeeded


@pytest.mark.parametrize("heads_limit", [200_000, 1])
def test_a_clean_log_verified_in_two_processes_gives_the_one_pass_report(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, heads_limit: int
) -> None:
    two_sealed_halves(ledger, gateway)
    one = verify_ledger(ledger, heads_limit=heads_limit)
    two = verify_ledger(ledger, heads_limit=heads_limit, processes=2)
    assert one.processes == 1 and two.processes == 2
    assert same(two) == same(one)
    assert two.ok and two.aggregates > 0 and two.chained_events == two.events - two.legacy_events


@pytest.mark.parametrize("heads_limit", [200_000, 1])
def test_tampering_after_the_split_seal_is_found_by_this_process_as_by_the_one_pass(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, raw: RawStore, heads_limit: int
) -> None:
    at = two_sealed_halves(ledger, gateway)
    resumed = reverse(ledger, gateway, "a_es_paid")  # of an aggregate started before the seal
    ledger.seal()
    raw.edit(resumed, lambda state: state.update(amount_reversed=1))
    edited = tamper(raw, ledger, "b_es_paid")
    assert edited > at and resumed > at
    one = verify_ledger(ledger, heads_limit=heads_limit)
    two = verify_ledger(ledger, heads_limit=heads_limit, processes=2)
    assert two.processes == 2
    assert same(two) == same(one)
    assert {p.kind for p in two.problems} == {ProblemKind.BROKEN_LINK, ProblemKind.SEAL_MISMATCH}
    assert min(p.notification_id or 0 for p in two.problems) > at


def test_tampering_before_the_split_seal_makes_the_one_pass(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, raw: RawStore
) -> None:
    at = two_sealed_halves(ledger, gateway)
    edited = tamper(raw, ledger, "a_es_paid")
    assert edited <= at
    one = verify_ledger(ledger)
    two = verify_ledger(ledger, processes=2)
    assert two.processes == 1
    assert two.as_dict() == one.as_dict()
    assert {p.kind for p in two.problems} == {ProblemKind.BROKEN_LINK, ProblemKind.SEAL_MISMATCH}
    assert min(p.notification_id or 0 for p in two.problems) <= at  # the next link, a seal


@pytest.mark.parametrize("interpreter", ["false", "/no/such/python"])
def test_a_second_process_that_fails_or_cannot_start_makes_the_one_pass(
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    monkeypatch: pytest.MonkeyPatch,
    interpreter: str,
) -> None:
    two_sealed_halves(ledger, gateway)
    one = verify_ledger(ledger)
    monkeypatch.setattr(split_module.sys, "executable", interpreter)
    two = verify_ledger(ledger, processes=2)
    assert two.processes == 1 and two.as_dict() == one.as_dict()


def test_an_aggregate_the_first_part_had_makes_the_one_pass(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If an aggregate that starts after the seal was also before it, the split's counts
    and findings are not the one pass's: the run is made again, in one process."""
    two_sealed_halves(ledger, gateway)
    one = verify_ledger(ledger)
    asked: list[int] = []

    def had_it(ledger: PayoutLedger, first: Any, new_ids: bytearray, through: int) -> bool:
        asked.append(len(new_ids) // 16)
        return True

    monkeypatch.setattr(split_module, "first_seen_before", had_it)
    two = verify_ledger(ledger, processes=2)
    assert asked and asked[0] > 0  # the aggregates that started after the seal were asked of it
    assert two.processes == 1 and two.as_dict() == one.as_dict()


def test_an_aggregate_started_after_the_seal_is_looked_up_only_if_the_filter_may_have_it(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    at = two_sealed_halves(ledger, gateway)
    before = int(ledger.payout_id("a_es_paid").hex, 16)
    after = int(ledger.payout_id("b_es_paid").hex, 16)
    ids = bytearray(before.to_bytes(16, "big") + after.to_bytes(16, "big"))

    def first(seen: bytes) -> FirstPartResult:
        return FirstPartResult(True, "", 0, 0, 0, 0, seen)

    size = 1 << 16
    everything, nothing = b"\xff" * (size // 8), bytes(size // 8)
    assert first_seen_before(ledger, first(everything), ids, at)  # a_es_paid is before it
    assert not first_seen_before(ledger, first(everything), ids[16:], at)  # b_es_paid is not
    assert not first_seen_before(ledger, first(nothing), ids, at)  # "certainly not seen"
    marked = SeenFilter(size)
    marked.add(before)
    assert first_seen_before(ledger, first(bytes(marked.bits)), ids, at)
    assert marked.may_have(before) and not SeenFilter(size).may_have(before)


def test_a_log_too_small_or_without_a_seal_to_split_at_is_verified_in_one_process(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_scenario(ledger, gateway)
    assert verify_ledger(ledger, processes=2).processes == 1  # no seal
    ledger.seal()
    assert verify_ledger(ledger, processes=2).processes == 1  # the only seal is the last
    two_sealed_halves(ledger, gateway)
    assert verify_ledger(ledger, processes=2).processes == 2
    monkeypatch.setattr(split_module, "SPLIT_SMALLEST", 10**9)
    assert verify_ledger(ledger, processes=2).processes == 1


def test_the_checkpoint_a_split_run_writes_carries_the_incremental_run_as_the_one_pass(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, raw: RawStore, tmp_path: Path
) -> None:
    """The checkpoint's filter holds the aggregates of both parts: an aggregate of the
    first part that goes on after the checkpoint is rebuilt, not taken for new."""
    split_file, one_file = tmp_path / "split.checkpoint", tmp_path / "one.checkpoint"
    two_sealed_halves(ledger, gateway)
    two = verify_ledger(ledger, checkpoint=split_file, processes=2)
    one = verify_ledger(ledger, checkpoint=one_file)
    assert two.processes == 2 and same(two) == same(one)

    last = reverse(ledger, gateway, "a_es_paid")  # a first-part payout goes on
    assert last > two.latest_seal.through_notification_id  # type: ignore[union-attr]
    ledger.release_payment(release("d_es_new", amount=100))
    edited = tamper(raw, ledger, "d_es_new")
    ledger.seal()
    continued = verify_ledger(ledger, checkpoint=split_file, heads_limit=1)
    assert continued.incremental
    full = verify_ledger(ledger, checkpoint=one_file, full=True, heads_limit=1)
    assert same(continued) == same(full)
    [problem] = continued.problems  # nothing said of a_es_paid's new event
    assert problem.kind is ProblemKind.BROKEN_LINK and problem.notification_id > edited


def test_a_second_process_that_read_another_store_makes_the_one_pass(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_sealed_halves(ledger, gateway)
    one = verify_ledger(ledger)
    result = split_module.FirstPart.result

    def elsewhere(self: split_module.FirstPart) -> FirstPartResult | None:
        done = result(self)
        assert done is not None and done.clean
        return dataclasses.replace(done, store="0" * 64)

    monkeypatch.setattr(split_module.FirstPart, "result", elsewhere)
    two = verify_ledger(ledger, processes=2)
    assert two.processes == 1 and two.as_dict() == one.as_dict()


def test_the_command_verifies_in_two_processes_when_asked_and_refuses_three(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, durable_store_url: str
) -> None:
    two_sealed_halves(ledger, gateway)
    env = {"PAYOUT_LEDGER_STORE_URL": durable_store_url}
    two = CliRunner().invoke(app, ["verify", "--processes", "2"], env=env)
    assert two.exit_code == 0, two.output
    assert "Read in two processes, split at a seal." in two.output
    as_json = CliRunner().invoke(app, ["verify", "--processes", "2", "--json"], env=env)
    assert json.loads(as_json.stdout)["processes"] == 2
    one = CliRunner().invoke(app, ["verify", "--json"], env=env)
    assert json.loads(one.stdout) == json.loads(as_json.stdout) | {"processes": 1}
    three = CliRunner().invoke(app, ["verify", "--processes", "3"], env=env)
    assert three.exit_code == 2 and "Traceback" not in three.output
    for wrong in (0, 3, True, 2.0):
        with pytest.raises(InvalidRequestError, match="processes must be 1 or 2"):
            verify_ledger(ledger, processes=wrong)  # type: ignore[arg-type]


def test_an_encrypted_log_is_verified_in_two_processes_through_the_cipher(
    durable_store_url: str, gateway: InMemoryTransferGateway, providers: Any
) -> None:
    """The second process opens the store with the ledger's settings, its cipher key
    included (on a pipe), and reads what this one reads."""
    key = SecretStr(AESCipher.create_key(32))
    settings = LedgerSettings(store_url=durable_store_url, cipher_key=key)
    with PayoutLedger(settings=settings, providers=providers, gateway=gateway) as ledger:
        two_sealed_halves(ledger, gateway)
        one = verify_ledger(ledger)
        two = verify_ledger(ledger, processes=2)
    assert one.ok and two.processes == 2 and same(two) == same(one)
