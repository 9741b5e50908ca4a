"""Anchor sinks: where the maintenance worker writes each seal's digest, outside the database.

A seal is only as good as its anchor (docs/audit.md): its ``seal_digest``
kept where the database's writers cannot rewrite it. ``worker_anchor_sink``
names one:

* ``file:/path/anchors.jsonl`` appends one JSON line per seal
  (``{"seal_number", "through_notification_id", "seal_digest", "sealed_at"}``)
  and syncs it to disk; ``payout-ledger verify --anchor-file`` reads it as it is.
  The file's last line tells which seals it already has.
* ``command:program args`` runs ``program`` (no shell; the arguments split as
  a shell would, with ``shlex``) once per seal, that JSON object on its stdin,
  within a timeout, with the worker's environment less its ``PAYOUT_LEDGER_*``
  variables (the ledger's secrets). Exit status 0 means anchored; anything
  else is a failure, and the seal is offered again at the next cycle.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from payout_ledger.errors import PayoutLedgerError
from payout_ledger.settings import anchor_sink_parts

__all__ = [
    "AnchorError",
    "AnchorSink",
    "Anchored",
    "CommandAnchorSink",
    "FileAnchorSink",
    "anchor_sink",
]

COMMAND_TIMEOUT = 10.0
"""Seconds an anchor command may take for one seal before it counts as failed."""

_TAIL = 64 * 1024
"""Bytes read from the end of an anchors file to find its last seal."""


class AnchorError(PayoutLedgerError):
    """A seal digest could not be written to the anchor sink; it is offered again later."""


class Anchored(NamedTuple):
    """The newest seal a sink holds."""

    seal_number: int
    """0 when the sink holds none."""
    seal_digest: str | None


class AnchorSink(ABC):
    """Somewhere outside the database to keep seal digests."""

    description: str
    """What the sink is, for logs: a file's path or a command's program (never its arguments)."""

    @abstractmethod
    def last_anchored(self) -> Anchored | None:
        """The newest seal the sink holds (number 0: none), or None if it cannot tell."""

    @abstractmethod
    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Anchor these seals, oldest first; raise ``AnchorError`` if any could not be
        (those before it stay anchored)."""


class FileAnchorSink(AnchorSink):
    """Appends one JSON line per seal to a file, synced to disk before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file:{path}"

    def last_anchored(self) -> Anchored | None:
        try:
            with self.path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - _TAIL))
                tail = f.read()
        except FileNotFoundError:
            return Anchored(0, None)
        except OSError as exc:
            raise AnchorError(f"cannot read the anchors file {self.path}: {exc.strerror}") from None
        newest = Anchored(0, None)
        for line in tail.splitlines():
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                record = json.loads(line)
                number, digest = record.get("seal_number"), record.get("seal_digest")
                whole = isinstance(number, int) and not isinstance(number, bool)
                if whole and number > newest.seal_number:
                    newest = Anchored(number, digest if isinstance(digest, str) else None)
        if newest.seal_number == 0 and tail.strip():
            return None  # digests only (``seal --digest-only``): which seals is unknown
        return newest

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not records:
            return
        lines = "".join(json.dumps(dict(r), sort_keys=True) + "\n" for r in records)
        try:
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # one writer at a time on this host
                size = os.fstat(fd).st_size
                # A line torn by a crash has no newline: end it, so the next line stays whole.
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    lines = "\n" + lines
                os.write(fd, lines.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _sync_folder(self.path.parent)
        except OSError as exc:
            raise AnchorError(
                f"cannot write the anchors file {self.path}: {exc.strerror or exc}"
            ) from None


def _sync_folder(folder: Path) -> None:
    """Sync a folder, so that a file just created in it survives a power cut."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class CommandAnchorSink(AnchorSink):
    """Runs a command per seal, the seal as one JSON object on its stdin."""

    def __init__(self, argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT) -> None:
        if not argv:
            raise ValueError("an anchor command needs a program")
        self.argv = list(argv)
        self.timeout = timeout
        self.description = f"command:{self.argv[0]}"

    def last_anchored(self) -> Anchored | None:
        return None

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        for record in records:
            self._run(json.dumps(dict(record), sort_keys=True) + "\n", record.get("seal_number"))

    def _run(self, document: str, seal_number: object) -> None:
        where = f"anchor command {self.argv[0]} (seal {seal_number})"
        try:
            done = subprocess.run(  # noqa: S603 - the operator's own command, no shell
                self.argv,
                input=document.encode(),
                env=_without_ledger_settings(os.environ),
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise AnchorError(f"{where} did not finish within {self.timeout:g} s") from None
        except OSError as exc:
            raise AnchorError(f"{where} cannot be run: {exc.strerror or exc}") from None
        if done.returncode != 0:
            said = _first_line(done.stderr.decode(errors="replace"))
            for secret in self.argv[1:]:  # its arguments may hold a token
                if len(secret) >= 4:
                    said = said.replace(secret, "***")
            raise AnchorError(
                f"{where} exited with status {done.returncode}" + (f": {said}" if said else "")
            )


def _without_ledger_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment less ``PAYOUT_LEDGER_*``: the command needs none of the ledger's
    secrets (the Stripe key, the store's password, the cipher key)."""
    return {k: v for k, v in environ.items() if not k.startswith("PAYOUT_LEDGER_")}


def _first_line(text: str) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line[:200]


def anchor_sink(sink: str, *, timeout: float = COMMAND_TIMEOUT) -> AnchorSink:
    """The sink a ``worker_anchor_sink`` value names (``file:...`` or ``command:...``).

    Raises ``ValueError`` (without quoting the value) for another form.
    """
    kind, parts = anchor_sink_parts(sink)
    if kind == "file":
        return FileAnchorSink(Path(parts[0]).expanduser())
    return CommandAnchorSink(parts, timeout=timeout)
