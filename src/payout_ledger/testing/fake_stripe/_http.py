"""The request pipeline (auth, faults, idempotency, dispatch) and HTTP server.

One request goes through, in order: recording, authentication, fault drawing,
parameter decoding, routing, the idempotency layer, then the endpoint.  The
HTTP handler itself only reads the request and writes (or withholds) the reply.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import socket
import socketserver
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

from ._api import ApiCall, Handler, StripeBackend
from ._errors import StripeError
from ._forms import FormError, Params, parse_form
from ._idempotency import (
    MAX_KEY_LENGTH,
    Claimed,
    IdempotencyStore,
    InFlight,
    Mismatch,
    Replay,
    StoredResponse,
)
from ._rate_limit import RateLimiter
from ._resources import JSON, RequestInfo, new_id
from .faults import DropAfterCommit, DropBeforeCommit, FaultPlan, RateLimited, ServerError

__all__ = ["FakeStripeServer", "Headers", "Pipeline", "RecordedRequest", "Reply"]

_log = logging.getLogger(__name__)


class Headers(Mapping[str, str]):
    """Request headers with case-insensitive lookup (``h["idempotency-key"]``)."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        """Keep ``items`` in order; on duplicates the first one wins lookups."""
        self._items = tuple(items)

    def __getitem__(self, name: str) -> str:
        wanted = name.lower()
        for key, value in self._items:
            if key.lower() == wanted:
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for key, _ in self._items:
            if key.lower() not in seen:
                seen.add(key.lower())
                yield key

    def __len__(self) -> int:
        return len({key.lower() for key, _ in self._items})

    def __repr__(self) -> str:
        return f"Headers({dict(self)!r})"


@dataclass
class RecordedRequest:
    """One request the fake received, and what became of it.

    ``status`` is ``None`` for a dropped connection (``dropped``) or a request
    still being handled; ``fault`` names the outcome fault it drew, if any.
    """

    method: str
    path: str
    query: str
    headers: Headers
    request_id: str
    params: Params = field(default_factory=dict)
    status: int | None = None
    replayed: bool = False
    dropped: bool = False
    fault: str | None = None
    received_at: float = field(default_factory=time.monotonic)
    """When the request arrived (``time.monotonic``): rates are measured on it."""

    @property
    def idempotency_key(self) -> str | None:
        """The ``Idempotency-Key`` header, if sent."""
        return self.headers.get("Idempotency-Key")

    @property
    def stripe_version(self) -> str | None:
        """The ``Stripe-Version`` header (the API version asked for), if sent."""
        return self.headers.get("Stripe-Version")


@dataclass(frozen=True)
class Reply:
    """What to send back; ``drop`` means close the connection instead."""

    status: int = 0
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False
    replayed: bool = False


_DROP = Reply(drop=True)


@dataclass(frozen=True)
class _Outcome:
    """An endpoint's result before it becomes a `Reply`."""

    status: int
    body: JSON
    stored: bool
    extra_headers: tuple[tuple[str, str], ...] = ()


class Pipeline:
    """Turns one HTTP request into a `Reply`; thread-safe."""

    def __init__(
        self,
        *,
        backend: StripeBackend,
        faults: FaultPlan,
        idempotency: IdempotencyStore,
        api_key: str,
        api_version: str,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        """Serve ``backend`` to clients presenting ``api_key`` (within
        ``rate_limiter``'s limits, when given)."""
        self._rate_limiter = rate_limiter
        self._backend = backend
        self._faults = faults
        self._idempotency = idempotency
        self._api_key = api_key
        self._api_version = api_version
        self._lock = threading.Lock()
        self._log: list[RecordedRequest] = []
        self._counters: Counter[str] = Counter()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Copies of the recorded requests, in arrival order."""
        with self._lock:
            return [dataclasses.replace(record) for record in self._log]

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of the pipeline's counters."""
        with self._lock:
            return dict(self._counters)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1

    def handle(self, method: str, target: str, headers: Headers, body: bytes) -> Reply:
        """Process one request; may block (latency faults)."""
        split = urlsplit(target)
        record = RecordedRequest(
            method=method,
            path=split.path,
            query=split.query,
            headers=headers,
            request_id=new_id("req"),
        )
        with self._lock:
            self._log.append(record)
            self._counters["requests"] += 1
        reply = self._process(record, body)
        with self._lock:
            record.status = None if reply.drop else reply.status
            record.dropped = reply.drop
            record.replayed = reply.replayed
            if reply.drop:
                self._counters["dropped_connections"] += 1
        return reply

    def _process(self, record: RecordedRequest, body: bytes) -> Reply:
        method, path, headers = record.method, record.path, record.headers
        auth_error = self._authenticate(headers)
        if auth_error is not None:
            self._count("auth_failures")
            return self._reply(record, _error(auth_error, stored=False))

        drawn = self._faults.draw(method, path)
        outcome_fault = drawn.outcome
        if outcome_fault is not None:
            with self._lock:
                record.fault = type(outcome_fault).__name__
                self._counters["faults_triggered"] += 1
        if isinstance(outcome_fault, DropBeforeCommit):
            time.sleep(drawn.delay)
            return _DROP
        if isinstance(outcome_fault, RateLimited):
            time.sleep(drawn.delay)
            self._count("rate_limited")
            return self._reply(record, _rate_limited(_fault_headers(outcome_fault)))
        limited = self._rate_limiter.admit(method, path) if self._rate_limiter else None
        if limited is not None and self._rate_limiter is not None:
            self._count("rate_limited")
            return self._reply(record, _rate_limited(self._rate_limiter.headers(limited)))

        try:
            raw = body.decode("utf-8") if method == "POST" else record.query
            params = parse_form(raw)
        except (FormError, UnicodeDecodeError) as exc:
            param = exc.param if isinstance(exc, FormError) else None
            invalid = StripeError(400, "invalid_request_error", str(exc), param=param)
            return self._reply(record, _error(invalid, stored=False))
        with self._lock:
            record.params = params

        found = self._backend.route(method, path)
        if found is None:
            self._count("not_found")
            return self._reply(record, _error(_unrecognized_url(method, path), stored=False))
        handler, path_args = found

        key = headers.get("Idempotency-Key") if method == "POST" else None
        claim: Claimed | None = None
        if key is not None:
            if not 1 <= len(key) <= MAX_KEY_LENGTH:
                return self._reply(record, _error(_bad_key_length(key), stored=False))
            account = headers.get("Stripe-Account", "")
            state = self._idempotency.begin(account, key, f"{method} {path}", params)
            if isinstance(state, Replay):
                time.sleep(drawn.delay)
                self._count("idempotent_replays")
                replay = self._replay(record, state.response)
                return _DROP if isinstance(outcome_fault, DropAfterCommit) else replay
            if isinstance(state, Mismatch):
                self._count("idempotency_mismatches")
                mismatch = StripeError(400, "idempotency_error", state.message)
                return self._reply(record, _error(mismatch, stored=False))
            if isinstance(state, InFlight):
                self._count("idempotency_conflicts")
                return self._reply(record, _error(_in_flight_error(key), stored=False))
            claim = state

        call = ApiCall(params, path_args, RequestInfo(record.request_id, key or None))
        try:
            time.sleep(drawn.delay)
            server_error = isinstance(outcome_fault, ServerError)
            outcome = _server_error() if server_error else _execute(handler, call)
            if outcome.status >= 500:
                self._count("server_errors")
            reply = self._reply(record, outcome)
            if claim is not None and outcome.stored:
                saved = StoredResponse(
                    outcome.status, reply.body, record.request_id, outcome.extra_headers
                )
                self._idempotency.complete(claim, saved)
        finally:
            if claim is not None:
                self._idempotency.release(claim)  # no-op once a response is saved
        return _DROP if isinstance(outcome_fault, DropAfterCommit) else reply

    def _authenticate(self, headers: Headers) -> StripeError | None:
        authorization = headers.get("Authorization", "").strip()
        if not authorization:
            return StripeError(
                401,
                "invalid_request_error",
                "You did not provide an API key. You need to provide your API key "
                "in the Authorization header, using Bearer auth "
                "(e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        presented = _presented_key(authorization)
        if presented != self._api_key:
            masked = _mask(presented or "")
            return StripeError(401, "invalid_request_error", f"Invalid API Key provided: {masked}")
        return None

    def _headers(
        self, record: RecordedRequest, extra: Iterable[tuple[str, str]] = ()
    ) -> tuple[tuple[str, str], ...]:
        headers = [
            ("Content-Type", "application/json"),
            ("Request-Id", record.request_id),
            ("Stripe-Version", record.headers.get("Stripe-Version", self._api_version)),
        ]
        key = record.idempotency_key
        if record.method == "POST" and key:
            headers.append(("Idempotency-Key", key))
        headers.extend(extra)
        return tuple(headers)

    def _reply(self, record: RecordedRequest, outcome: _Outcome) -> Reply:
        body = json.dumps(outcome.body, indent=2).encode()
        return Reply(outcome.status, body, self._headers(record, outcome.extra_headers))

    def _replay(self, record: RecordedRequest, stored: StoredResponse) -> Reply:
        extra = [
            *stored.extra_headers,
            ("Idempotent-Replayed", "true"),
            ("Original-Request", stored.request_id),
        ]
        return Reply(stored.status, stored.body, self._headers(record, extra), replayed=True)


def _execute(handler: Handler, call: ApiCall) -> _Outcome:
    try:
        return _Outcome(200, handler(call), stored=True)
    except StripeError as exc:
        return _error(exc, stored=exc.stored)
    except Exception:
        # A bug while executing: Stripe answers (and saves) a 500.
        _log.exception("fake Stripe endpoint failed")
        return _server_error()


def _error(error: StripeError, *, stored: bool) -> _Outcome:
    return _Outcome(error.status, error.body(), stored=stored)


def _server_error() -> _Outcome:
    error = StripeError(
        500,
        "api_error",
        "An unknown error occurred while processing the request (fake Stripe).",
    )
    # A saved 500 replays on retry, so Stripe tells clients not to bother.
    return _Outcome(
        500, error.body(), stored=True, extra_headers=(("Stripe-Should-Retry", "false"),)
    )


def _rate_limit_error() -> StripeError:
    return StripeError(
        429,
        "invalid_request_error",
        "Request rate limit exceeded. Learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        code="rate_limit",
    )


def _rate_limited(headers: tuple[tuple[str, str], ...]) -> _Outcome:
    error = _rate_limit_error()
    return _Outcome(error.status, error.body(), stored=False, extra_headers=headers)


def _fault_headers(fault: RateLimited) -> tuple[tuple[str, str], ...]:
    headers = []
    if fault.retry_after is not None:
        headers.append(("Retry-After", f"{fault.retry_after:g}"))
    if fault.should_retry is not None:
        headers.append(("Stripe-Should-Retry", "true" if fault.should_retry else "false"))
    return tuple(headers)


def _in_flight_error(key: str) -> StripeError:
    return StripeError(
        409,
        "idempotency_error",
        "There is currently another in-progress request using this Stripe "
        f"idempotency key '{key}' (that probably means you submitted twice, and "
        "the other request is still going through). Please try again later.",
        code="idempotency_key_in_use",
    )


def _bad_key_length(key: str) -> StripeError:
    # Stripe docs, "Idempotent requests": keys are up to 255 characters long.
    # The wording is the one reported from Stripe's API for a key of length 0.
    return StripeError(
        400,
        "invalid_request_error",
        f"Idempotent key length is {len(key)}, which is outside accepted lengths. "
        f"Idempotent Keys must be 1-{MAX_KEY_LENGTH} characters long. If you're looking "
        "for a decent generator, try using a UUID defined by IETF RFC 4122.",
    )


def _unrecognized_url(method: str, path: str) -> StripeError:
    return StripeError(
        404,
        "invalid_request_error",
        f"Unrecognized request URL ({method}: {path}).",
        code="resource_missing",
    )


def _mask(key: str) -> str:
    """Mask a key as Stripe does: ``sk_test_****************abcd``."""
    if len(key) > 12:
        return key[:8] + "*" * (len(key) - 12) + key[-4:]
    return "*" * max(len(key) - 4, 0) + key[-4:]


def _presented_key(authorization: str) -> str | None:
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0]
    return None


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, asks the pipeline, writes or withholds the reply."""

    server_version = "FakeStripe"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection

    def _serve(self) -> None:
        server = cast("FakeStripeServer", self.server)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        server.mark_busy(self.request)
        reply = server.pipeline.handle(self.command, self.path, Headers(self.headers.items()), body)
        if reply.drop:
            # Nothing written: the server closes the socket, the client sees
            # the connection end without a response.
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    def do_GET(self) -> None:
        """Serve a GET."""
        self._serve()

    def do_POST(self) -> None:
        """Serve a POST."""
        self._serve()

    def do_DELETE(self) -> None:
        """Serve a DELETE."""
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


class FakeStripeServer(ThreadingHTTPServer):
    """A threading HTTP server on 127.0.0.1 and a random free port.

    Sized for a host's test suite: the listen backlog takes hundreds of
    simultaneous connections (the standard library's 5 made the kernel reset
    them), each served on its own daemon thread.  `server_close` ends
    them all: idle connections are closed at once, requests already being
    handled get up to ``grace`` seconds to answer before their connections
    are closed too.
    """

    # The kernel caps the backlog at net.core.somaxconn (4096 on current Linux).
    request_queue_size = 1024
    daemon_threads = True
    block_on_close = False  # server_close joins the handler threads itself

    def __init__(self, pipeline: Pipeline, *, grace: float = 5.0) -> None:
        """Bind ``127.0.0.1:0`` (no other address, ever) and serve ``pipeline``."""
        self.pipeline = pipeline
        self.grace = grace
        self._connections_lock = threading.Lock()
        self._connections: dict[socket.socket, _Connection] = {}
        self._closing = False
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse-DNS lookup of the host."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = host
        self.server_port = port

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self.socket.getsockname()[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve one accepted connection on its own thread, tracked until it ends."""
        connection = _Connection(
            threading.Thread(
                target=self.process_request_thread,
                args=(request, client_address),
                name="fake-stripe-connection",
                daemon=True,
            )
        )
        with self._connections_lock:
            if self._closing:
                self.shutdown_request(request)
                return
            self._connections[request] = connection
        connection.thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Handle the connection, close it, and stop tracking it."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(request, None)

    def mark_busy(self, request: Any) -> None:
        """Note that ``request``'s connection has a request being handled."""
        with self._connections_lock:
            connection = self._connections.get(request)
            if connection is not None:
                connection.busy = True

    def server_close(self) -> None:
        """Close the listening socket, then every connection, and join their threads.

        Call after ``shutdown()``.  A handler still asleep in a latency fault
        past the grace period is left to wake on a closed connection (its
        thread is a daemon and ends then).
        """
        super().server_close()
        with self._connections_lock:
            self._closing = True
            idle = [sock for sock, conn in self._connections.items() if not conn.busy]
        for sock in idle:
            _abort(sock)
        deadline = time.monotonic() + self.grace
        for connection in self._snapshot():
            connection.thread.join(max(0.0, deadline - time.monotonic()))
        for sock in self._sockets():
            _abort(sock)
        for connection in self._snapshot():
            connection.thread.join(1.0)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a handler failure instead of printing it; a client that went
        away (or a connection closed by `server_close`) is routine."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            _log.debug("fake Stripe connection from %s ended: %r", client_address, error)
        else:
            _log.exception("fake Stripe failed serving %s", client_address)

    def _snapshot(self) -> list[_Connection]:
        with self._connections_lock:
            return list(self._connections.values())

    def _sockets(self) -> list[socket.socket]:
        with self._connections_lock:
            return list(self._connections)


@dataclass
class _Connection:
    thread: threading.Thread
    busy: bool = False


def _abort(sock: socket.socket) -> None:
    """Wake the connection's handler with end-of-file; its thread closes it."""
    with contextlib.suppress(OSError):  # already closed by the client or the handler
        sock.shutdown(socket.SHUT_RDWR)
