"""Fuzzing the real endpoint: any body and any headers get 200, 400, 403 or 413, never 500."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import SECRET, UNKNOWN_SECRET, SiteFactory, make_event, new_event_id, sign

EXAMPLES = 200
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
EVENT_TYPES = [
    "payment_intent.succeeded",
    "account.updated",
    "transfer.created",
    "transfer.updated",
    "transfer.reversed",
    "charge.refunded",
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


# Objects shaped like Stripe's: the fields the ledger reads are mostly well
# formed (so that the ledger gets that far) and sometimes any JSON at all.
def _mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(valid, valid, json_values)


stripe_objects = st.fixed_dictionaries(
    {
        "id": _mostly(st.sampled_from(["pi_1", "tr_1", "acct_1"]) | st.text(min_size=1)),
        "amount": _mostly(st.integers(min_value=1, max_value=10**6)),
        "currency": _mostly(st.sampled_from(["usd", "eur"])),
        "metadata": _mostly(st.dictionaries(st.text(max_size=10), st.text(max_size=10))),
    },
    optional={
        "payouts_enabled": _mostly(st.booleans()),
        "destination": _mostly(st.just("acct_1")),
        "amount_reversed": _mostly(st.integers(min_value=0, max_value=10**6)),
        "reversed": _mostly(st.booleans()),
        "transfer_group": _mostly(st.text(max_size=20)),
        "created": _mostly(st.integers(min_value=0, max_value=2**31)),
    },
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    event = make_event(
        draw(st.sampled_from(EVENT_TYPES) | st.sampled_from(EVENT_TYPES) | st.text(max_size=30)),
        draw(stripe_objects),
        event_id=draw(st.builds(new_event_id) | st.builds(new_event_id) | st.text(max_size=30)),
    )
    for key in draw(st.sets(st.sampled_from(["id", "type", "data", "account", "livemode"]))):
        if draw(st.booleans()):
            event.pop(key, None)
        else:
            event[key] = draw(json_values)
    return event


bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    events().map(lambda e: json.dumps(e).encode()),
    events().map(lambda e: json.dumps(e, ensure_ascii=False, indent=1).encode()),
)
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
).map(str.strip)


@st.composite
def forged_signatures(draw: st.DrawFn, body: bytes) -> str | None:
    """Any Stripe-Signature except a valid one for this body."""
    now = int(time.time())
    kind = draw(st.sampled_from(["absent", "text", "shaped", "wrong_secret", "stale", "other"]))
    if kind == "absent":
        return None
    if kind == "text":
        return draw(header_text)
    if kind == "shaped":
        timestamp = draw(st.integers(min_value=-(10**12), max_value=10**12) | st.just(now))
        digests = draw(st.lists(st.text("0123456789abcdef", max_size=64), max_size=3))
        return ",".join([f"t={timestamp}", *(f"v1={d}" for d in digests)])
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return f"t={now},v1={'0' * 64}"
    if kind == "wrong_secret":
        return sign(text.encode(), UNKNOWN_SECRET)
    if kind == "stale":
        return sign(text.encode(), SECRET, now - 301 - draw(st.integers(0, 10**6)))
    return sign(text.encode() + b" ", SECRET)  # signed for another body


extra_headers = st.dictionaries(
    st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20).filter(
        lambda name: (
            name.strip("-") == name
            and name not in {"content-length", "transfer-encoding", "host", "connection"}
        )
    ),
    header_text,
    max_size=3,
)


# Nothing unverified reaches the store, so one store is enough here (the signed
# fuzz below runs on both).
@pytest.mark.parametrize("store_url", ["memory://"])
def test_fuzzed_unsigned_or_forged_requests_are_refused_and_change_nothing(
    make_site: SiteFactory,
) -> None:
    """Without a valid signature any request gets 400/403/413 and the ledger is unchanged."""
    site = make_site(max_body_bytes=256)
    statuses: set[int] = set()

    @FUZZ
    @given(data=st.data(), body=bodies, headers=extra_headers)
    def check(data: st.DataObject, body: bytes, headers: dict[str, str]) -> None:
        signature = data.draw(forged_signatures(body))
        if signature is not None:
            headers = {**headers, "stripe-signature": signature}
        before = site.stored_count()

        response = site.post(body, headers=headers)

        assert response.status_code in {400, 403, 413}, response.text
        assert site.stored_count() == before
        assert site.callbacks.count == 0
        statuses.add(response.status_code)

    check()
    assert statuses == {403, 413}  # no forged request got as far as parsing


def test_fuzzed_correctly_signed_bodies_get_200_or_400_and_never_500(
    make_site: SiteFactory,
) -> None:
    """Validly signed bodies of any shape get 200, 400 (or 403 if not UTF-8), never 500."""
    site = make_site()
    statuses: list[int] = []

    @FUZZ
    @given(body=bodies, headers=extra_headers)
    def check(body: bytes, headers: dict[str, str]) -> None:
        try:
            signature = sign(body)
            allowed = {200, 400}
        except UnicodeDecodeError:  # Stripe signs UTF-8 text only
            signature = f"t={int(time.time())},v1={'0' * 64}"
            allowed = {403}
        before = site.stored_count()

        response = site.post(body, signature, headers)

        assert response.status_code in allowed, (response.status_code, response.text)
        if response.status_code != 200 or response.json().get("duplicate"):
            assert site.stored_count() == before
        else:
            assert site.stored_count() > before
        statuses.append(response.status_code)

    check()
    assert len(statuses) >= EXAMPLES
    assert {200, 400} <= set(statuses)
