"""The fake under a host test suite's load, and a clean stop.

A host's tests fire hundreds of requests at once (each SDK thread on its own
connection); every one must reach the fake and get its answer.  ``stop()``
must then leave no handler thread or connection behind.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

import pytest
import stripe

from payout_ledger.testing.fake_stripe import FakeStripe, faults

CLIENTS = 300


def test_three_hundred_concurrent_clients_all_get_answers(fake: FakeStripe) -> None:
    """300 threads, each with its own client and connection, create transfers and
    accounts at the same instant: no APIConnectionError, every request executed."""
    destination = fake.client().v1.accounts.create({"type": "express"}).id
    clients = [fake.client(max_network_retries=0) for _ in range(CLIENTS)]
    start = threading.Barrier(CLIENTS)
    outcomes: list[str] = []
    lock = threading.Lock()

    def call(index: int) -> None:
        client = clients[index]
        start.wait()
        try:
            if index % 2:
                made: stripe.StripeObject = client.v1.transfers.create(
                    {"amount": 1, "currency": "usd", "destination": destination},
                    options={"idempotency_key": f"load-{index}"},
                )
            else:
                made = client.v1.accounts.create({"type": "express"})
            outcome = "ok" if made.last_response is not None else "no response"
        except stripe.StripeError as error:
            outcome = f"{type(error).__name__}: {error.user_message}"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert Counter(outcomes) == {"ok": CLIENTS}
    assert len(fake.transfers()) == CLIENTS // 2
    assert len(fake.accounts()) == 1 + CLIENTS - CLIENTS // 2
    assert fake.balance("usd") == 10**9 - CLIENTS // 2
    assert fake.counters["requests"] == 1 + CLIENTS
    assert "dropped_connections" not in fake.counters


def wait_for_threads(count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while threading.active_count() < count:
        if time.monotonic() > deadline:
            raise AssertionError("the fake did not take the connections in time")
        time.sleep(0.01)


def test_stop_closes_idle_connections_and_leaves_no_thread_behind() -> None:
    """Connections that never send a request do not outlive ``stop()``."""
    before = set(threading.enumerate())
    fake = FakeStripe().start()
    address = urlsplit(fake.url)
    assert address.hostname == "127.0.0.1"
    idle = [
        socket.create_connection((address.hostname, address.port or 0), timeout=5)
        for _ in range(20)
    ]
    try:
        wait_for_threads(len(before) + 20)
        started = time.monotonic()
        fake.stop()
        assert time.monotonic() - started < 5
        assert [t for t in threading.enumerate() if t not in before] == []
        for connection in idle:
            with contextlib.suppress(ConnectionResetError):  # or reset it
                assert connection.recv(1) == b""  # the fake closed its end
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address.hostname, address.port or 0), timeout=1)
    finally:
        fake.stop()
        for connection in idle:
            connection.close()


def test_stop_lets_a_request_in_flight_finish_then_ends_its_thread() -> None:
    """A request held by latency when ``stop()`` is called still gets its answer."""
    before = set(threading.enumerate())
    fake = FakeStripe().start()
    try:
        client = fake.client()
        destination = client.v1.accounts.create({"type": "express"}).id
        fake.inject(faults.latency(0.5))
        answers: list[object] = []

        def post() -> None:
            try:
                answers.append(
                    client.v1.transfers.create(
                        {"amount": 5, "currency": "usd", "destination": destination}
                    )
                )
            except stripe.StripeError as error:
                answers.append(error)

        poster = threading.Thread(target=post)
        poster.start()
        deadline = time.monotonic() + 5
        while len(fake.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        fake.stop()
        assert [t for t in threading.enumerate() if t not in before and t is not poster] == []
        poster.join(timeout=5)
        assert len(answers) == 1
        assert isinstance(answers[0], stripe.Transfer)
        assert len(fake.transfers()) == 1
    finally:
        fake.stop()
