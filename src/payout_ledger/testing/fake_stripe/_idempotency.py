"""Stripe API v1 idempotency: saved responses keyed by ``Idempotency-Key``.

The rules, from Stripe's documentation on idempotent requests:

* the status and body of the first request with a key are saved once the
  endpoint starts executing, whether it succeeds or fails (500s included);
  later requests with that key get the saved response back;
* a key reused with other parameters, or on another endpoint, is an
  ``idempotency_error``;
* nothing is saved when parameters fail validation or when the request
  collides with a concurrent one holding the same key (409);
* keys may be pruned once they are at least 24 hours old; a pruned key
  starts a brand-new request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ._clock import FakeClock
from ._forms import Params

__all__ = [
    "Claimed",
    "IdempotencyStore",
    "InFlight",
    "Mismatch",
    "Replay",
    "StoredResponse",
]

MAX_KEY_LENGTH = 255  # Stripe docs, "Idempotent requests": keys are up to 255 characters


@dataclass(frozen=True)
class StoredResponse:
    """A saved response: what a replay sends back."""

    status: int
    body: bytes
    request_id: str
    extra_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Claimed:
    """The caller now holds the key and must ``complete`` or ``release`` it."""

    scope: tuple[str, str]


@dataclass(frozen=True)
class Replay:
    """The key already has a saved response for the same request."""

    response: StoredResponse


@dataclass(frozen=True)
class Mismatch:
    """The key was first used for another endpoint or other parameters."""

    message: str


@dataclass(frozen=True)
class InFlight:
    """Another request holding the same key is still executing."""


@dataclass
class _Entry:
    endpoint: str
    params: Params
    created_at: float
    response: StoredResponse | None = None


class IdempotencyStore:
    """Thread-safe idempotency keys, aged on a `FakeClock`."""

    def __init__(self, clock: FakeClock, max_age: float) -> None:
        """Keep keys for ``max_age`` seconds of ``clock`` time."""
        self._clock = clock
        self._max_age = max_age
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}

    def begin(
        self, account: str, key: str, endpoint: str, params: Params
    ) -> Claimed | Replay | Mismatch | InFlight:
        """Look the key up for a request about to run and claim it if new.

        ``account`` scopes the key (the ``Stripe-Account`` header or ``""``),
        ``endpoint`` is ``"POST /v1/..."``.
        """
        scope = (account, key)
        with self._lock:
            self._prune()
            entry = self._entries.get(scope)
            if entry is None:
                self._entries[scope] = _Entry(endpoint, params, self._clock.now())
                return Claimed(scope)
            if entry.endpoint != endpoint:
                return Mismatch(
                    "Keys for idempotent requests can only be used for the same "
                    f"endpoint they were first used for ('{entry.endpoint}' vs "
                    f"'{endpoint}'). Try using a key other than '{key}' if you "
                    "meant to execute a different request."
                )
            if entry.params != params:
                return Mismatch(
                    "Keys for idempotent requests can only be used with the same "
                    "parameters they were first used with. Try using a key other "
                    f"than '{key}' if you meant to execute a different request."
                )
            if entry.response is None:
                return InFlight()
            return Replay(entry.response)

    def complete(self, claim: Claimed, response: StoredResponse) -> None:
        """Save the response of the request that holds ``claim``."""
        with self._lock:
            entry = self._entries.get(claim.scope)
            if entry is not None and entry.response is None:
                entry.response = response

    def release(self, claim: Claimed) -> None:
        """Forget a claimed key without saving anything (validation failed)."""
        with self._lock:
            entry = self._entries.get(claim.scope)
            if entry is not None and entry.response is None:
                del self._entries[claim.scope]

    def __len__(self) -> int:
        """Number of keys currently held (saved or in flight)."""
        with self._lock:
            return len(self._entries)

    def _prune(self) -> None:
        now = self._clock.now()
        expired = [
            scope
            for scope, entry in self._entries.items()
            if entry.response is not None and now - entry.created_at > self._max_age
        ]
        for scope in expired:
            del self._entries[scope]
