"""Incremental audit and verify: a run from a checkpoint equals a full run over the same log.

Each test writes a log, runs the tool with a checkpoint file (a full run that
writes it), writes more, then compares a run from the checkpoint with a full
run over the whole log: their reports must be equal in everything but the
``checkpoint`` and ``incremental`` fields, tampered logs included. A damaged,
foreign or rewritten checkpoint makes a full run that says why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from payout_ledger import ConfigurationError, LedgerSettings, PayoutAggregate, PayoutLedger
from payout_ledger.audit import (
    ProblemKind,
    ViolationKind,
    audit_ledger,
    verify_ledger,
)
from payout_ledger.audit import replay as replay_module
from payout_ledger.audit import verify as verify_module
from payout_ledger.cli import app
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.audit.scenario import (
    deliver,
    plant_ghost_reversal,
    release,
    run_reversal_scenario,
    run_scenario,
    transfer_event,
)
from tests.audit.support import RawStore, notification_ids


@pytest.fixture
def store_url(durable_store_url: str) -> str:
    return durable_store_url


def without_checkpoint(report: Any) -> dict[str, Any]:
    found = dict(report.as_dict())
    found.pop("checkpoint")
    found.pop("incremental")
    return found


def tamper_transfer(raw: RawStore, ledger: PayoutLedger, event_service_id: str) -> int:
    """Edit a recorded transfer's amount: a broken link, and a transfer unlike its claim."""
    payout = ledger.payout_id(event_service_id)
    ids = notification_ids(ledger, payout)
    [succeeded] = [i for i in ids if raw.row(i).topic == PayoutAggregate.TransferSucceeded.TOPIC]

    def change(state: dict[str, Any]) -> None:
        state["amount"] += 1

    raw.edit(succeeded, change)
    return succeeded


def test_incremental_audit_and_verify_equal_full_runs_with_tampering_before_and_after(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, raw: RawStore, tmp_path: Path
) -> None:
    audit_file, verify_file = tmp_path / "audit.checkpoint", tmp_path / "verify.checkpoint"
    run_scenario(ledger, gateway, prefix="a_")
    before = tamper_transfer(raw, ledger, "a_es_paid")  # before the checkpoint, sealed over
    ledger.seal()

    first_audit = audit_ledger(ledger, checkpoint=audit_file)
    first_verify = verify_ledger(ledger, checkpoint=verify_file)
    assert first_audit.checkpoint.startswith("missing") and not first_audit.incremental
    assert first_verify.checkpoint.startswith("missing") and not first_verify.incremental
    assert before in [v.notification_id for v in first_audit.violations]
    assert {p.kind for p in first_verify.problems} == {ProblemKind.BROKEN_LINK}
    position = first_verify.latest_seal.through_notification_id  # type: ignore[union-attr]

    run_scenario(ledger, gateway, prefix="b_")
    ledger.release_payment(release("a_es_inflight", amount=1200))  # a payout of before, resumed
    after = tamper_transfer(raw, ledger, "b_es_paid")  # after the checkpoint
    ledger.seal()
    ledger.release_payment(release("c_es_unsealed", amount=100))  # after the newest seal

    pages: list[int] = []
    audited = audit_ledger(ledger, checkpoint=audit_file, on_page=lambda _, n: pages.append(n))
    verified = verify_ledger(ledger, checkpoint=verify_file)
    assert audited.incremental and audited.checkpoint.startswith("continued after")
    assert verified.incremental
    assert verified.checkpoint == f"continued after notification {position}"
    assert sum(pages) == audited.events - first_audit.events  # only the new events were read

    full_audit, full_verify = audit_ledger(ledger), verify_ledger(ledger)
    assert without_checkpoint(audited) == without_checkpoint(full_audit)
    assert without_checkpoint(verified) == without_checkpoint(full_verify)
    assert {before, after} <= {v.notification_id for v in full_audit.violations}
    assert ViolationKind.TRANSFER_UNLIKE_CLAIM in {v.kind for v in full_audit.violations}
    assert len([p for p in full_verify.problems if p.kind is ProblemKind.BROKEN_LINK]) == 2

    # And once more from the checkpoints those runs wrote: nothing new, the same reports.
    assert without_checkpoint(audit_ledger(ledger, checkpoint=audit_file)) == without_checkpoint(
        full_audit
    )
    again = verify_ledger(ledger, checkpoint=verify_file)
    assert again.incremental and without_checkpoint(again) == without_checkpoint(full_verify)


def test_a_clean_log_stays_clean_incrementally(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, tmp_path: Path
) -> None:
    audit_file, verify_file = tmp_path / "audit.checkpoint", tmp_path / "verify.checkpoint"
    run_scenario(ledger, gateway)
    ledger.seal()
    assert audit_ledger(ledger, checkpoint=audit_file).ok
    assert verify_ledger(ledger, checkpoint=verify_file).ok
    run_scenario(ledger, gateway, prefix="next_")
    ledger.seal()
    audited = audit_ledger(ledger, checkpoint=audit_file)
    verified = verify_ledger(ledger, checkpoint=verify_file)
    assert audited.ok and audited.incremental
    assert verified.ok and verified.incremental
    assert without_checkpoint(audited) == without_checkpoint(audit_ledger(ledger))
    assert without_checkpoint(verified) == without_checkpoint(verify_ledger(ledger))


@pytest.mark.parametrize("tool", ["audit", "verify"])
def test_a_damaged_or_foreign_checkpoint_makes_a_full_run_that_says_so(
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    providers: InMemoryProviderDirectory,
    tmp_path: Path,
    tool: str,
) -> None:
    run = audit_ledger if tool == "audit" else verify_ledger
    path = tmp_path / "checkpoint"
    run_scenario(ledger, gateway)
    ledger.seal()
    run(ledger, checkpoint=path)
    run_scenario(ledger, gateway, prefix="next_")
    ledger.seal()
    full = without_checkpoint(run(ledger))

    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    report = run(ledger, checkpoint=path)
    assert report.checkpoint.startswith("refused: the file is damaged") and not report.incremental
    assert without_checkpoint(report) == full

    path.write_bytes(good[:-1])  # truncated
    report = run(ledger, checkpoint=path)
    assert report.checkpoint.startswith("refused") and not report.incremental
    assert without_checkpoint(report) == full

    path.write_bytes(b"not a checkpoint")
    assert run(ledger, checkpoint=path).checkpoint.startswith("refused")

    path.write_bytes(good)
    report = run(ledger, checkpoint=path, full=True)
    assert report.checkpoint.startswith("full") and not report.incremental
    assert without_checkpoint(report) == full

    other_gateway = InMemoryTransferGateway()
    settings = LedgerSettings(store_url=f"sqlite:///{tmp_path / 'other.db'}")
    with PayoutLedger(settings=settings, providers=providers, gateway=other_gateway) as other:
        run_scenario(other, other_gateway, prefix="other_")
        other.seal()
        report = run(other, checkpoint=path)
    assert "another store" in report.checkpoint and not report.incremental


def rewrite(path: Path, change: Any, blob: str | None = None) -> None:
    """Edit a checkpoint as someone who can write the file, and recompute its digest:
    ``change(header)`` edits its JSON in place, or, with ``blob``, ``change(its bytes)``
    gives that blob's new bytes."""
    import hashlib

    data = path.read_bytes()
    magic_end = data.index(b"\n") + 1
    size = int.from_bytes(data[magic_end + 65 : magic_end + 73], "big")
    header = json.loads(data[magic_end + 73 : magic_end + 73 + size])
    at = magic_end + 73 + size
    blobs = {}
    for name, length in header["blobs"]:
        blobs[name], at = data[at : at + length], at + length
    if blob is None:
        change(header)
    else:
        blobs[blob] = change(blobs[blob])
    header["blobs"] = [[name, len(blobs[name])] for name, _ in header["blobs"]]
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = b"".join(blobs[name] for name, _ in header["blobs"])
    digest = hashlib.sha256(encoded + body).hexdigest().encode()
    path.write_bytes(
        data[:magic_end] + digest + b"\n" + len(encoded).to_bytes(8, "big") + encoded + body
    )


def test_a_checkpoint_whose_digest_or_seal_was_rewritten_is_refused(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, raw: RawStore, tmp_path: Path
) -> None:
    path = tmp_path / "verify.checkpoint"
    run_scenario(ledger, gateway)
    ledger.seal()
    verify_ledger(ledger, checkpoint=path)

    def forget_a_problem(header: dict[str, Any]) -> None:
        header["body"]["rolling"] = "ab" * 32

    rewrite(path, forget_a_problem)
    report = verify_ledger(ledger, checkpoint=path)
    assert "not those seal" in report.checkpoint and not report.incremental

    verify_ledger(ledger, checkpoint=path, full=True)

    def other_seal(header: dict[str, Any]) -> None:
        header["seal"]["seal_digest"] = "cd" * 32

    rewrite(path, other_seal)
    report = verify_ledger(ledger, checkpoint=path)
    assert "seals were rewritten" in report.checkpoint and not report.incremental


KEY = "5e1f0c2a8b7d4e6f9a3c1b0d2e4f6a8c"
"""A checkpoint key, as an operator would make one (``secrets.token_hex(16)``)."""


def forget_findings(header: dict[str, Any]) -> None:
    """What someone who can write the checkpoint file would do to hide tampering."""
    body = header["body"]
    body["violations" if header["kind"] == "audit" else "problems"] = []


@pytest.mark.parametrize("tool", ["audit", "verify"])
def test_a_keyed_checkpoint_rewritten_without_its_key_is_refused(
    tool: str,
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    raw: RawStore,
    tmp_path: Path,
) -> None:
    """A checkpoint's digest is keyed (HMAC-SHA-256) when the run is given a key: one
    rewritten by someone without the key (its findings dropped, its digest recomputed)
    is refused and the whole log read, so the tampering it hid is found again. Without
    a key, the same rewrite is taken: the file must then be kept where no one else
    writes, as the docs say."""
    run = audit_ledger if tool == "audit" else verify_ledger
    path = tmp_path / f"{tool}.checkpoint"
    run_scenario(ledger, gateway)
    tamper_transfer(raw, ledger, "es_paid")
    ledger.seal()

    unkeyed = run(ledger, checkpoint=path)
    assert not unkeyed.ok
    rewrite(path, forget_findings)
    assert run(ledger, checkpoint=path).ok  # the forgery is taken: no key, no proof

    keyed = run(ledger, checkpoint=path, full=True, checkpoint_key=KEY)
    assert without_checkpoint(keyed) == without_checkpoint(unkeyed)
    assert KEY.encode() not in path.read_bytes()
    assert without_checkpoint(run(ledger, checkpoint=path, checkpoint_key=KEY)) == (
        without_checkpoint(unkeyed)
    )
    rewrite(path, forget_findings)
    forged = run(ledger, checkpoint=path, checkpoint_key=KEY)
    assert not forged.incremental and not forged.ok
    assert forged.checkpoint.startswith("refused: its digest is not the one its key makes")
    assert without_checkpoint(forged) == without_checkpoint(unkeyed)

    # A keyed file read without its key, or with another, and an unkeyed file read
    # with a key: refused, and said so (never the key itself).
    run(ledger, checkpoint=path, full=True, checkpoint_key=KEY)
    for key, why in (
        (None, "refused: it is keyed, and no checkpoint key was given"),
        ("another key, as long as the first", "refused: its digest is not the one"),
    ):
        report = run(ledger, checkpoint=path, checkpoint_key=key)
        assert report.checkpoint.startswith(why) and not report.incremental
        assert KEY not in json.dumps(report.as_dict())
        run(ledger, checkpoint=path, full=True, checkpoint_key=KEY)
    run(ledger, checkpoint=path, full=True)
    report = run(ledger, checkpoint=path, checkpoint_key=KEY)
    assert report.checkpoint.startswith("refused: it is not keyed, and a checkpoint key was")
    assert not report.incremental


ACCEPTED_KEYS = ["k" * 16, "clé d'auditeur ✓", "x" * 4096]
"""Keys at the edges of what is accepted: exactly 16 characters, text beyond ASCII
(16 characters, more bytes), a long one."""


@pytest.mark.parametrize("key", ACCEPTED_KEYS, ids=["16", "unicode", "4096"])
def test_every_accepted_key_keys_a_checkpoint_that_only_it_opens(
    key: str, ledger: PayoutLedger, gateway: InMemoryTransferGateway, tmp_path: Path
) -> None:
    assert LedgerSettings(checkpoint_key=key).checkpoint_key is not None
    with pytest.raises(ConfigurationError, match="checkpoint_key"):
        LedgerSettings(checkpoint_key=key[:15])
    run_scenario(ledger, gateway)
    ledger.seal()
    for run in (audit_ledger, verify_ledger):
        path = tmp_path / f"{run.__name__}.checkpoint"
        run(ledger, checkpoint=path, checkpoint_key=key)
        assert run(ledger, checkpoint=path, checkpoint_key=key).incremental
        other = key[:-1] + ("y" if key[-1] != "y" else "z")
        refused = run(ledger, checkpoint=path, checkpoint_key=other)
        assert refused.checkpoint.startswith("refused: its digest is not the one its key")


@pytest.mark.parametrize("key", ["", "short", b"bytes, not text, of any length"])
def test_a_checkpoint_key_must_be_text_of_16_characters_or_more(
    key: Any, ledger: PayoutLedger, tmp_path: Path
) -> None:
    for run in (audit_ledger, verify_ledger):
        with pytest.raises(ConfigurationError, match="checkpoint key") as raised:
            run(ledger, checkpoint=tmp_path / "c", checkpoint_key=key)
        assert str(key) not in str(raised.value) or not key


def test_verify_without_a_seal_writes_no_checkpoint(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, tmp_path: Path
) -> None:
    path = tmp_path / "verify.checkpoint"
    run_scenario(ledger, gateway)
    report = verify_ledger(ledger, checkpoint=path)
    assert report.ok and "no seal" in report.checkpoint and not path.exists()


def test_bounded_memory_changes_no_finding(
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    raw: RawStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One summary and one head kept, every aggregate a "maybe seen": every payout and chain
    is rebuilt from the log at each of its events, and the reports are the same."""
    run_scenario(ledger, gateway)
    tamper_transfer(raw, ledger, "es_retry")
    ledger.seal()
    run_scenario(ledger, gateway, prefix="b_")
    # Later events of payouts let go by then: a reversal webhook, and a resumed attempt.
    [paid] = gateway.transfers_for("es_paid")
    reversed_ = gateway.reverse(paid.transfer_id, 1000)
    deliver(ledger, transfer_event("evt_late", "transfer.reversed", reversed_, 1000))
    ledger.release_payment(release("es_inflight", amount=1200))
    roomy_audit, roomy_verify = audit_ledger(ledger), verify_ledger(ledger)
    monkeypatch.setattr(replay_module, "filter_bits", lambda events: 8)
    monkeypatch.setattr(verify_module, "filter_bits", lambda events: 8)
    tight_audit = audit_ledger(ledger, summaries_limit=1, page_size=1)  # evicts at each page
    assert audit_ledger(ledger, summaries_limit=1, decode="mapper").as_dict() == (
        roomy_audit.as_dict()
    )
    tight_verify = verify_ledger(ledger, heads_limit=1)
    assert tight_audit.as_dict() == roomy_audit.as_dict()
    assert tight_verify.as_dict() == roomy_verify.as_dict()
    assert not roomy_audit.ok and not roomy_verify.ok


@pytest.mark.parametrize("command", ["audit", "verify"])
def test_the_commands_take_a_checkpoint_and_say_what_they_did(
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    durable_store_url: str,
    tmp_path: Path,
    command: str,
) -> None:
    run_scenario(ledger, gateway)
    ledger.seal()
    env = {"PAYOUT_LEDGER_STORE_URL": durable_store_url}
    path = tmp_path / f"{command}.checkpoint"
    first = CliRunner().invoke(app, [command, "--checkpoint", str(path)], env=env)
    assert first.exit_code == 0, first.output
    assert "Checkpoint: missing: no checkpoint file yet, the whole log was read." in first.output
    run_scenario(ledger, gateway, prefix="next_")
    ledger.seal()
    second = CliRunner().invoke(app, [command, "--checkpoint", str(path), "--json"], env=env)
    assert second.exit_code == 0, second.output
    found = json.loads(second.stdout)
    assert found["incremental"] is True
    assert found["checkpoint"].startswith("continued after notification")
    full = CliRunner().invoke(app, [command, "--checkpoint", str(path), "--full"], env=env)
    assert "Checkpoint: full: the whole log was read, as asked (--full)." in full.output

    nowhere = tmp_path / "missing-folder" / "file"
    failed = CliRunner().invoke(app, [command, "--checkpoint", str(nowhere)], env=env)
    assert failed.exit_code == 2, failed.output
    assert f"cannot write --checkpoint {nowhere}" in failed.output
    assert "Traceback" not in failed.output

    # The key comes from the environment (the settings), never from the command line.
    keyed = {**env, "PAYOUT_LEDGER_CHECKPOINT_KEY": KEY}
    written = CliRunner().invoke(app, [command, "--checkpoint", str(path)], env=keyed)
    assert "refused: it is not keyed, and a checkpoint key was given" in written.output
    assert path.read_bytes().startswith(b"payout-ledger checkpoint 1 keyed\n")
    again = CliRunner().invoke(app, [command, "--checkpoint", str(path), "--json"], env=keyed)
    assert json.loads(again.stdout)["incremental"] is True
    unkeyed = CliRunner().invoke(app, [command, "--checkpoint", str(path)], env=env)
    assert "refused: it is keyed, and no checkpoint key was given" in unkeyed.output
    assert KEY not in written.output + again.output + unkeyed.output


def test_a_transfer_id_reused_after_the_checkpoint_is_named_by_a_full_read(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, raw: RawStore, tmp_path: Path
) -> None:
    """The checkpoint keeps transfer ids as hashes: a hash seen twice makes the audit read the
    whole log again, to name the payout that recorded the id first."""
    path = tmp_path / "audit.checkpoint"
    run_scenario(ledger, gateway)
    ledger.seal()
    assert audit_ledger(ledger, checkpoint=path).ok
    [first] = gateway.transfers_for("es_paid")
    ledger.release_payment(release("es_copy", amount=5000))
    copy_ids = notification_ids(ledger, ledger.payout_id("es_copy"))
    [succeeded] = [
        i for i in copy_ids if raw.row(i).topic == PayoutAggregate.TransferSucceeded.TOPIC
    ]
    raw.edit(succeeded, lambda state: state.update(transfer_id=first.transfer_id))

    report = audit_ledger(ledger, checkpoint=path)
    assert not report.incremental and "a transfer id was recorded twice" in report.checkpoint
    assert without_checkpoint(report) == without_checkpoint(audit_ledger(ledger))
    [reused] = [v for v in report.violations if v.kind is ViolationKind.TRANSFER_ID_REUSED]
    assert reused.notification_id == succeeded
    assert str(ledger.payout_id("es_paid")) in reused.detail


@pytest.mark.parametrize("limit", [replay_module.SUMMARIES_LIMIT, 1, 0], ids=str)
def test_open_payouts_of_a_checkpoint_touched_or_not_equal_a_full_run(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, tmp_path: Path, limit: int
) -> None:
    """A run from a checkpoint keeps the payouts open there as they were saved (with their
    rows and money) until an event touches one: then it is taken up as a summary. Payouts
    settled after the checkpoint, reversals settled, payouts left untouched and new open
    ones give the full run's report, at every bound of the kept summaries (0: unbounded)."""
    audit_file = tmp_path / "audit.checkpoint"
    for prefix in ("a_", "b_"):
        run_scenario(ledger, gateway, prefix=prefix)
        run_reversal_scenario(ledger, gateway, prefix=prefix)
    first = audit_ledger(ledger, checkpoint=audit_file, summaries_limit=limit)
    assert {p.event_service_id for p in first.in_flight} == {"a_es_inflight", "b_es_inflight"}
    assert {r.event_service_id for r in first.reversals_in_flight} == {"a_es_rev", "b_es_rev"}

    assert ledger.resume("a_es_inflight").success  # touched: settles
    assert ledger.resume_reversal("a_es_rev").success  # touched: its reversal settles
    run_scenario(ledger, gateway, prefix="c_")  # new payouts, some left open
    audited = audit_ledger(ledger, checkpoint=audit_file, summaries_limit=limit)
    full = audit_ledger(ledger, summaries_limit=limit)

    assert audited.incremental
    assert without_checkpoint(audited) == without_checkpoint(full)
    still_open = {p.event_service_id for p in full.in_flight}
    assert "b_es_inflight" in still_open and "a_es_inflight" not in still_open  # untouched, settled
    assert {r.event_service_id for r in full.reversals_in_flight} == {"b_es_rev"}
    # From the checkpoint that run wrote, after more: the same again.
    assert ledger.resume_reversal("b_es_rev").success
    assert ledger.resume("c_es_inflight").success
    again = audit_ledger(ledger, checkpoint=audit_file, summaries_limit=limit)
    assert again.incremental
    assert without_checkpoint(again) == without_checkpoint(audit_ledger(ledger))
    assert again.reversals_in_flight == []


@pytest.mark.parametrize("tool", ["audit", "verify"])
def test_a_body_that_fails_to_load_leaves_nothing_of_it_in_the_full_run(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, tmp_path: Path, tool: str
) -> None:
    """A checkpoint bound to the right seal, whose last part cannot be read (a file of
    another release, or rewritten): the run is a full one, and none of the checkpoint's
    state (its rolling digest and count, its totals) leaks into it."""
    path = tmp_path / f"{tool}.checkpoint"
    run_tool = audit_ledger if tool == "audit" else verify_ledger
    run_scenario(ledger, gateway)
    ledger.seal()
    run_tool(ledger, checkpoint=path)

    def unreadable_last(header: dict[str, Any]) -> None:
        if tool == "verify":
            header["body"]["chained_events"] = header["body"].pop("chained_events")
            del header["body"]["v1_links"]  # read after everything else
        else:
            header["body"]["respelt"] = "not a list of rows"

    rewrite(path, unreadable_last)
    report = run_tool(ledger, checkpoint=path)
    assert report.checkpoint.startswith("refused: the file is damaged") and not report.incremental
    assert report.ok
    assert without_checkpoint(report) == without_checkpoint(run_tool(ledger))


def _twice(lines: list[bytes]) -> list[bytes]:
    return [lines[0], *lines]


def _not_an_id(lines: list[bytes]) -> list[bytes]:
    return [b'["' + b"z" * 36 + lines[0][38:], *lines[1:]]


def _upper_case_id(lines: list[bytes]) -> list[bytes]:
    return [lines[0][:2] + lines[0][2:38].upper() + lines[0][38:], *lines[1:]]


def _bracket_in_id(lines: list[bytes]) -> list[bytes]:
    return [lines[0][:5] + b"[" + lines[0][6:], *lines[1:]]


def _no_id(lines: list[bytes]) -> list[bytes]:
    return [b"[" + lines[0][40:], *lines[1:]]


@pytest.mark.parametrize("damage", [_twice, _not_an_id, _upper_case_id, _bracket_in_id, _no_id])
def test_a_checkpoint_whose_open_payouts_are_not_one_per_id_is_refused(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, tmp_path: Path, damage: Any
) -> None:
    """Someone who can write the file rewrites an open payout's saved line (and the
    digest): a payout twice, or a line whose payout id is not one the store writes.
    The run refuses the file and reads the whole log, before using any of it."""
    path = tmp_path / "audit.checkpoint"
    run_scenario(ledger, gateway)
    run_reversal_scenario(ledger, gateway)
    audit_ledger(ledger, checkpoint=path)

    def change(blob: bytes) -> bytes:
        lines = blob.split(b"\n")
        assert lines.pop() == b"" and lines
        return b"".join(line + b"\n" for line in damage(lines))

    rewrite(path, change, blob="open")
    report = audit_ledger(ledger, checkpoint=path)
    assert report.checkpoint.startswith("refused") and not report.incremental
    assert "payout" in report.checkpoint
    assert without_checkpoint(report) == without_checkpoint(audit_ledger(ledger))


@pytest.mark.parametrize("touched", [True, False], ids=["touched", "listed"])
def test_a_saved_open_payout_that_cannot_be_read_is_never_taken_for_one(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, tmp_path: Path, touched: bool
) -> None:
    """A line of an open payout rewritten behind its id (and the digest recomputed).
    Taken up by a new event, it refuses the file: the run reads the whole log and
    equals a full one. Left untouched, it stays as saved until the report lists it,
    and listing it fails with the reason rather than showing a made-up row."""
    path = tmp_path / "audit.checkpoint"
    run_scenario(ledger, gateway)
    audit_ledger(ledger, checkpoint=path)
    payout = str(ledger.payout_id("es_inflight")).encode()

    def change(blob: bytes) -> bytes:
        lines = blob.split(b"\n")
        [at] = [i for i, line in enumerate(lines) if line[2:38] == payout]
        lines[at] = lines[at][:39] + b"not json]"
        return b"\n".join(lines)

    rewrite(path, change, blob="open")
    if touched:
        assert ledger.resume("es_inflight").success
        report = audit_ledger(ledger, checkpoint=path)
        assert report.checkpoint == (
            "refused: the file is damaged: a saved payout cannot be read; the whole log was read"
        )
        assert not report.incremental
        assert without_checkpoint(report) == without_checkpoint(audit_ledger(ledger))
    else:
        report = audit_ledger(ledger, checkpoint=path)
        assert report.incremental and len(report.in_flight) == len(audit_ledger(ledger).in_flight)
        for _ in range(2):  # the same reason each time it is asked
            with pytest.raises(replay_module.CheckpointRefusedError, match="cannot be read"):
                list(report.in_flight)
        assert "not all readable: the file is damaged" in repr(report)


def test_rows_in_flight_keep_their_order_when_a_saved_payout_stays_in_flight_touched(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, tmp_path: Path
) -> None:
    """A payout in flight at the checkpoint is touched by an event that leaves it in
    flight (a reversal of a transfer it never made, written behind the ledger's back):
    its row, made live, still comes before the saved rows of payouts that started
    later, as in the full run."""
    path = tmp_path / "audit.checkpoint"
    for prefix in ("a_", "b_"):
        run_scenario(ledger, gateway, prefix=prefix)
    audit_ledger(ledger, checkpoint=path)
    plant_ghost_reversal(ledger, "a_es_inflight")

    audited = audit_ledger(ledger, checkpoint=path)
    full = audit_ledger(ledger)
    assert audited.incremental
    assert ViolationKind.REVERSAL_WITHOUT_TRANSFER in {v.kind for v in full.violations}
    flying = [p.event_service_id for p in full.in_flight]
    assert flying.index("a_es_inflight") < flying.index("b_es_inflight")
    assert without_checkpoint(audited) == without_checkpoint(full)


@pytest.mark.parametrize(
    ("tool", "key"),
    [
        # Before the payouts in flight were saved in the order they started (no count
        # of them, no ``since`` blob).
        ("audit", "in_flight_lines"),
        # Before the filter of seen aggregates marked two bits per aggregate: read as
        # this release reads it, it would answer "never seen" for aggregates it saw.
        ("audit", "filter_form"),
        ("verify", "filter_form"),
    ],
)
def test_a_checkpoint_of_a_previous_form_is_refused_by_name(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, tmp_path: Path, tool: str, key: str
) -> None:
    """A checkpoint another release wrote is refused as such: the run reads the whole log."""
    run = audit_ledger if tool == "audit" else verify_ledger
    path = tmp_path / f"{tool}.checkpoint"
    run_scenario(ledger, gateway)
    ledger.seal()
    run(ledger, checkpoint=path)

    def previous_form(header: dict[str, Any]) -> None:
        del header["body"][key]

    rewrite(path, previous_form)
    report = run(ledger, checkpoint=path)
    assert "another release" in report.checkpoint and not report.incremental
    assert without_checkpoint(report) == without_checkpoint(run(ledger))


@settings(max_examples=300, deadline=None)
@given(
    ids=st.lists(st.uuids(), min_size=1, max_size=5, unique=True),
    line=st.integers(0, 4),
    at=st.integers(0, 38),
    byte=st.integers(0, 255),
)
def test_every_byte_of_a_saved_head_is_checked(
    ids: list[Any], line: int, at: int, byte: int
) -> None:
    """One byte of one saved line's head ('["' + payout id + '"') set to any value: the
    index takes the lines only if every head is still a payout id as the ledger writes
    it, each once; any other head refuses the file."""
    lines = [b'["' + str(i).encode() + b'",1]' for i in ids]
    line %= len(lines)
    lines[line] = lines[line][:at] + bytes([byte]) + lines[line][at + 1 :]
    heads = [x[:39] for x in lines]
    well_formed = all(
        h[:2] == b'["' and h[38:39] == b'"' and h[2:38].decode("latin-1") == _uuid_text(h[2:38])
        for h in heads
    ) and len(set(heads)) == len(heads)
    if well_formed:
        assert replay_module._index(lines) == {h[2:38]: n for n, h in enumerate(heads)}
    else:
        with pytest.raises(replay_module.CheckpointRefusedError):
            replay_module._index(lines)


def _uuid_text(text: bytes) -> str:
    """``text`` as the ledger writes a payout id, or "" if it is no id."""
    from uuid import UUID

    try:
        return str(UUID(text.decode("ascii")))
    except ValueError:
        return ""
