"""Checkpoints: where an audit or a verify run stopped, so the next run reads only what is new.

A checkpoint file holds a tool's state at a notification id: for verify the
rolling digest, the counts and the findings up to the latest seal; for the
audit the totals folded so far, the payouts still open, the findings, and the
transfer ids as hashes. The next run with the same file reads the events after
that id only, and its report equals what a full run over the whole log gives
(a test holds the two equal, tampering included).

The file is tamper evident:

* its body carries a SHA-256 digest: a damaged file is refused;
* it names the store (the digest of the log's first event) and the seal it is
  chained to (number, digest and the notification id it covers). The seal must
  still be in the log with that digest; verify's checkpoint sits exactly at
  that seal's position and its rolling digest and event count must be the
  seal's own. Anchoring the seal outside the database (``payout-ledger
  worker`` does) vouches for the checkpoint in turn;
* ``--full`` reads the whole log again and writes the checkpoint anew;
* with a checkpoint key (``checkpoint_key``, ``PAYOUT_LEDGER_CHECKPOINT_KEY``)
  the digest is an HMAC-SHA-256 under that key: a file rewritten by someone
  without the key (a finding dropped, a total changed, the digest recomputed)
  is refused, as is a keyed file read without its key or an unkeyed one read
  with a key. Without a key the digest only finds damage: someone who can
  write the file can rewrite it whole.

A missing, damaged or refused checkpoint makes a full run, and the report says
why (``checkpoint``). Keep the file where the database's writers cannot write,
like the anchors, or give the runs a key kept from them: a run trusts what
the checkpoint says about the events before it, and an event edited *after*
the checkpoint was written, before its position, is found by the next
``--full`` run (or by the link of that aggregate's next event), not by an
incremental one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import tempfile
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from payout_ledger.adapters.log import iter_states, notification
from payout_ledger.adapters.mapper import chained_mapper, read_notification
from payout_ledger.errors import ConfigurationError
from payout_ledger.service.sealing import SealInfo
from payout_ledger.settings import CHECKPOINT_KEY_LENGTH

if TYPE_CHECKING:
    from payout_ledger.audit.verify_seals import Seal
    from payout_ledger.service.ledger import PayoutLedger

__all__ = [
    "Checkpoint",
    "CheckpointRefusedError",
    "checkpoint_key_of",
    "load_checkpoint",
    "save_checkpoint",
    "store_identity",
]

_MAGIC = b"payout-ledger checkpoint 1\n"
_KEYED_MAGIC = b"payout-ledger checkpoint 1 keyed\n"
"""The first line of a checkpoint whose digest is an HMAC under a checkpoint key."""

_T = TypeVar("_T")

Buffer: TypeAlias = "bytes | bytearray | memoryview | array[Any]"
"""A blob: anything whose bytes can be written without a copy."""


class CheckpointRefusedError(Exception):
    """Why a checkpoint cannot be used (the run reads the whole log and says so)."""


@dataclass
class Checkpoint:
    """One tool's state at a notification id."""

    kind: str
    """``audit`` or ``verify``."""
    store: str
    """The digest of the log's first event (the store the checkpoint is of)."""
    position: int
    """The notification id the state covers up to (inclusive)."""
    seal: dict[str, Any] | None
    """The seal it is chained to (``SealInfo.as_dict()`` with its class version), or None."""
    body: dict[str, Any]
    """The tool's state (JSON)."""
    blobs: dict[str, Any] = field(default_factory=dict)
    """Large binary parts, stored raw after the JSON, never copied: to write, a ``Buffer``,
    a list of them or ``Parts`` (each stored as one part); as read, a ``bytearray`` each."""


def store_identity(ledger: PayoutLedger) -> str:
    """The digest of the log's first stored event ("" for an empty log)."""
    for page in iter_states(ledger, page_size=1):
        return read_notification(chained_mapper(ledger), notification(*page[0])).digest
    return ""


def checkpoint_key_of(ledger: PayoutLedger, key: Any = None) -> bytes | None:
    """The key of a run's checkpoint: ``key`` if given, else the ledger's setting
    (``checkpoint_key``), as bytes; None for none. Raises ``ConfigurationError``
    for a key that is not text of 16 characters or more (never quoting it)."""
    if key is None:
        setting = ledger.settings.checkpoint_key
        key = None if setting is None else setting.get_secret_value()
    if key is None:
        return None
    if not isinstance(key, str) or len(key) < CHECKPOINT_KEY_LENGTH:
        raise ConfigurationError(
            f"a checkpoint key must be text of {CHECKPOINT_KEY_LENGTH} characters or more "
            "(secrets.token_hex(16) makes one)"
        )
    return key.encode("utf-8")


def _digest(key: bytes | None, data: bytes) -> Any:
    return hashlib.sha256(data) if key is None else hmac.new(key, data, hashlib.sha256)


def save_checkpoint(
    path: str | os.PathLike[str], checkpoint: Checkpoint, key: bytes | None = None
) -> None:
    """Write ``checkpoint`` to ``path`` atomically (a new file renamed over the old one);
    with ``key`` (see ``checkpoint_key_of``), its digest is an HMAC under that key.

    Each blob is read once, hashed as it is written; the digest is then written
    in its place near the start of the file. The file is not forced to disk: one
    a crash left damaged fails its digest, which costs a full run, nothing more.
    """
    target = Path(path)
    names = sorted(checkpoint.blobs)
    sizes = [_size(checkpoint.blobs[name]) for name in names]
    header = {
        "kind": checkpoint.kind,
        "store": checkpoint.store,
        "position": checkpoint.position,
        "seal": checkpoint.seal,
        "body": checkpoint.body,
        "blobs": [[name, size] for name, size in zip(names, sizes, strict=True)],
    }
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    digest = _digest(key, encoded)
    magic = _MAGIC if key is None else _KEYED_MAGIC
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(magic)
            f.write(b"0" * 64 + b"\n")
            f.write(len(encoded).to_bytes(8, "big"))
            f.write(encoded)
            for name, size in zip(names, sizes, strict=True):
                written = 0
                for buffer in _buffers(checkpoint.blobs[name]):
                    view = memoryview(buffer).cast("B")
                    digest.update(view)
                    f.write(view)
                    written += view.nbytes
                if written != size:
                    raise ValueError(f"blob {name!r} held {written} bytes, not {size}")
            f.seek(len(magic))
            f.write(digest.hexdigest().encode("ascii"))
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass
class Parts:
    """A blob written from parts produced as it is written (``nbytes`` in all)."""

    nbytes: int
    parts: Iterable[Buffer]


def _size(blob: Any) -> int:
    if isinstance(blob, Parts):
        return blob.nbytes
    return sum(memoryview(b).nbytes for b in _buffers(blob))


def _buffers(blob: Any) -> Iterable[Buffer]:
    if isinstance(blob, Parts):
        return blob.parts
    return blob if isinstance(blob, list) else [blob]


def load_checkpoint(
    path: str | os.PathLike[str], kind: str, key: bytes | None = None
) -> Checkpoint:
    """The checkpoint at ``path``; raises ``FileNotFoundError`` or ``CheckpointRefusedError``.

    Read part by part, each hashed as it comes, so the whole file is never in
    memory at once. With ``key``, the file must be keyed with it; without, unkeyed.
    """
    with open(path, "rb") as f:
        magic = f.readline(len(_KEYED_MAGIC))
        if magic not in (_MAGIC, _KEYED_MAGIC):
            raise CheckpointRefusedError("the file is not a checkpoint of this release")
        if magic == _KEYED_MAGIC and key is None:
            raise CheckpointRefusedError("it is keyed, and no checkpoint key was given")
        if magic == _MAGIC and key is not None:
            raise CheckpointRefusedError("it is not keyed, and a checkpoint key was given")
        try:
            expected = f.read(65)[:64].decode("ascii")
            size = int.from_bytes(f.read(8), "big")
            encoded = f.read(size)
            if len(encoded) != size:
                raise ValueError("truncated")
            header = json.loads(encoded)
            blobs: dict[str, Any] = {}
            digest = _digest(key, encoded)
            for name, length in header["blobs"]:
                blob = bytearray(length)
                if f.readinto(blob) != length:
                    raise ValueError("truncated")
                digest.update(blob)
                blobs[name] = blob
            trailing = f.read(1)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError) as exc:
            raise CheckpointRefusedError(f"the file is damaged ({type(exc).__name__})") from None
    if trailing or not hmac.compare_digest(digest.hexdigest(), expected):
        raise CheckpointRefusedError(
            "the file is damaged: its digest does not match its contents"
            if key is None
            else "its digest is not the one its key makes: rewritten without the key, or damaged"
        )
    if header.get("kind") != kind:
        raise CheckpointRefusedError(f"it is a checkpoint of {header.get('kind')!r}, not {kind!r}")
    return Checkpoint(
        kind=header["kind"],
        store=header["store"],
        position=header["position"],
        seal=header["seal"],
        body=header["body"],
        blobs=blobs,
    )


def restore_from(
    path: str | os.PathLike[str],
    kind: str,
    full: bool,
    use: Callable[[Checkpoint], _T],
    key: bytes | None = None,
) -> tuple[str, _T | None]:
    """Load the ``kind`` checkpoint at ``path`` and ``use`` it: (what was done, what
    ``use`` returned), or (why the whole log is read, None).

    ``use`` raises ``CheckpointRefusedError`` for a checkpoint it cannot take; a
    ``KeyError``, ``TypeError`` or ``ValueError`` it raises means a damaged file.
    """
    if full:
        return "full: the whole log was read, as asked (--full)", None
    try:
        saved = load_checkpoint(path, kind, key)
        restored = use(saved)
    except FileNotFoundError:
        return "missing: no checkpoint file yet, the whole log was read", None
    except CheckpointRefusedError as refused:
        return f"refused: {refused}; the whole log was read", None
    except (KeyError, TypeError, ValueError) as exc:
        return f"refused: the file is damaged ({type(exc).__name__}); the whole log was read", None
    return f"continued after notification {saved.position}", restored


def seal_binding(seal: Seal | None) -> dict[str, Any] | None:
    """What a checkpoint records of the seal it is chained to."""
    if seal is None:
        return None
    return {
        "notification_id": seal.notification_id,
        "class_version": seal.class_version,
        **seal.info.as_dict(),
    }


def check_binding(checkpoint: Checkpoint, ledger: PayoutLedger, seals: list[Seal]) -> Seal | None:
    """The seal the checkpoint is chained to, still in the log (else ``CheckpointRefusedError``)."""
    if checkpoint.store != store_identity(ledger):
        raise CheckpointRefusedError(
            "it is a checkpoint of another store (its first event differs)"
        )
    bound = checkpoint.seal
    if bound is None:
        return None
    for seal in seals:
        if seal.info.seal_number == bound["seal_number"]:
            if seal_binding(seal) != bound:
                raise CheckpointRefusedError(
                    f"seal {seal.info.seal_number} in the log is not the one the checkpoint "
                    "is chained to: seals were rewritten"
                )
            return seal
    raise CheckpointRefusedError(
        f"seal {bound['seal_number']}, which the checkpoint is chained to, is not in the log"
    )


def encode_value(value: Any) -> Any:
    """A raw column value as JSON (bytes as base64)."""
    if isinstance(value, bytes | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    return value


def decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        return base64.b64decode(value["b64"])
    return value


__all__ += [
    "Buffer",
    "Parts",
    "check_binding",
    "decode_value",
    "encode_value",
    "restore_from",
    "seal_binding",
]
_ = SealInfo  # the binding is SealInfo.as_dict()
