"""Every (event service, attempt) pair has its own Stripe idempotency key.

Event service ids may contain ``:``. With keys built as ``base:attempt:N``,
attempt 2 of ``es_1`` and attempt 1 of ``es_1:attempt:2`` both sent
``release_payment:es_1:attempt:2``: Stripe answered ``idempotency_error`` to the
second payout for a day. Attempt 1 keeps the seed's key exactly; the property
below covers every valid id.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from payout_ledger import PayoutLedger, ReleaseOutcome, idempotency_key
from payout_ledger.testing import InMemoryTransferGateway
from tests.support import release

# What ReleaseRequest accepts as an event service id: 1-200 printable ASCII, no space.
IDS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=200)
ATTEMPTS = st.integers(min_value=1, max_value=10_000)
# Ids that look like another service's later attempt are the interesting ones.
TRICKY_IDS = IDS | st.builds(
    lambda base, n, fmt: fmt.format(base=base, n=n),
    IDS.filter(lambda s: len(s) <= 150),
    ATTEMPTS,
    st.sampled_from(
        [
            "{base}:attempt:{n}",
            "release_payment:{base}",
            "attempt{n}:{base}",
            ".attempt{n}:{base}",
            "{base}:{n}",
        ]
    ),
)


def test_the_first_attempt_keeps_the_seeds_key() -> None:
    assert idempotency_key("es_42", 1) == "release_payment:es_42"


@given(a=TRICKY_IDS, n=ATTEMPTS, b=TRICKY_IDS, m=ATTEMPTS)
def test_keys_of_distinct_service_attempt_pairs_differ(a: str, n: int, b: str, m: int) -> None:
    if (a, n) != (b, m):
        assert idempotency_key(a, n) != idempotency_key(b, m)


@given(service=TRICKY_IDS, attempt=ATTEMPTS)
def test_a_key_names_its_service_and_attempt_and_fits_stripes_limit(
    service: str, attempt: int
) -> None:
    from payout_ledger.domain.payout import MAX_IDEMPOTENCY_KEY_LENGTH, parse_idempotency_key

    key = idempotency_key(service, attempt)
    assert parse_idempotency_key(key) == (service, attempt)
    assert len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH


def test_a_service_named_like_another_services_second_attempt_is_paid(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """The trial's case: attempt 2 of es_1 and attempt 1 of es_1:attempt:2 both pay."""
    gateway.decline_next()
    assert ledger.release_payment(release("es_1")).outcome is ReleaseOutcome.FAILED
    assert ledger.release_payment(release("es_1")).success

    result = ledger.release_payment(release("es_1:attempt:2"))

    assert result.outcome is ReleaseOutcome.RELEASED, result
    keys = [t.idempotency_key for t in gateway.transfers]
    assert len(keys) == len(set(keys)) == 2
