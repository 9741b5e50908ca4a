"""Decoding of Stripe's nested form encoding."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stripe._encode import _api_encode

from payout_ledger.testing.fake_stripe._forms import FormError, parse_form


def sdk_encode(params: dict[str, Any]) -> str:
    """Encode exactly as the stripe SDK does for v1 requests."""
    return urlencode(list(_api_encode(params))).replace("%5B", "[").replace("%5D", "]")


def test_nested_hashes_and_lists_are_rebuilt() -> None:
    """Bracketed keys become nested hashes, indexed ones lists."""
    body = "amount=5&metadata[event_service_id]=es-1&created[gte]=10&expand[0]=a&expand[1]=b"
    assert parse_form(body) == {
        "amount": "5",
        "metadata": {"event_service_id": "es-1"},
        "created": {"gte": "10"},
        "expand": ["a", "b"],
    }


def test_empty_brackets_append_to_a_list() -> None:
    """expand[]=a&expand[]=b is a list, as Stripe accepts from other clients."""
    assert parse_form("expand[]=a&expand[]=b") == {"expand": ["a", "b"]}


def test_metadata_with_numeric_keys_stays_a_hash() -> None:
    """Metadata keys are user data, even when they look like list indices."""
    assert parse_form("metadata[0]=x&metadata[1]=y") == {"metadata": {"0": "x", "1": "y"}}


def test_empty_values_are_kept_to_unset_fields() -> None:
    """metadata[key]= keeps the empty string that means unset."""
    assert parse_form("metadata[a]=&description=") == {
        "metadata": {"a": ""},
        "description": "",
    }


def test_metadata_keys_holding_square_brackets_are_kept_whole() -> None:
    """metadata[a[b]] is the key a[b], left for validation to refuse as Stripe does."""
    assert parse_form("metadata[a[b]]=x&metadata[]]=y") == {"metadata": {"a[b]": "x", "]": "y"}}


@pytest.mark.parametrize("body", ["a]b=1", "[x]=1", "a=1&a[b]=2", "a[b]=1&a=2"])
def test_malformed_or_conflicting_keys_are_refused(body: str) -> None:
    """Broken bracket syntax and scalar/hash clashes raise FormError."""
    with pytest.raises(FormError):
        parse_form(body)


keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(
    lambda key: key != "metadata"  # metadata hashes are free-form, tested above
)
scalars = st.text(alphabet="aZ09 _-.&=+%/?[]\u00e9\u20ac", max_size=12)
values = st.recursive(
    scalars,
    lambda inner: (
        st.dictionaries(keys, inner, min_size=1, max_size=3)
        | st.lists(scalars, min_size=1, max_size=3)
    ),
    max_leaves=8,
)


@given(st.dictionaries(keys, values, max_size=4))
def test_whatever_the_sdk_encodes_decodes_to_the_same_structure(
    params: dict[str, Any],
) -> None:
    """parse_form inverts the stripe SDK's own encoder."""
    assert parse_form(sdk_encode(params)) == params
