"""A stored event's state read in one typed pass, when it is exactly as its class declares.

The mapper reads a stored state with ``json``, revives each ``{"_type_", "_data_"}``
object with the transcoder and builds the event. The auditors and the read
model's rebuild read millions of states, most of them as the ledger wrote them;
[`typed_state`][payout_ledger.adapters.typed_state.typed_state] gives an event
class's decoder (msgspec) that takes a state only if:

* it is a JSON object whose every key the class declares (the row's originator
  columns aside), each field without a default present;
* each value has its declared type exactly: ``5.0`` is not an int, ``true`` is
  not an int, a datetime is ``{"_type_": "datetime_iso", "_data_": "..."}``;
* ``class_version`` is the class's own (absent, or 1, for version 1).

It raises on any other state. What it takes, it reads as ``json`` reads it (a
key given twice: the last), but for two things the transcoder would do next: a
datetime stays a [`StoredTime`][payout_ledger.adapters.typed_state.StoredTime],
and a ``dict[str, str]`` is not checked for the two keys that would make the
transcoder revive it.
[`TypedState.revivers`][payout_ledger.adapters.typed_state.TypedState.revivers] do
both, raising where the mapper would fail. A field with a default that the
state lacks is ``msgspec.UNSET``.

Classes with a field of a type this reading does not know (a float, which msgspec
reads from ``5`` as ``5.0``; a list; any other class) have no typed state: their
readers decode them as JSON.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

import msgspec

__all__ = ["StoredTime", "TypedState", "revived_by_the_transcoder", "typed_state"]

StoredTime = msgspec.defstruct(
    "StoredTime",
    [
        ("type_", Literal["datetime_iso"], msgspec.field(name="_type_")),
        ("data", str, msgspec.field(name="_data_")),
    ],
    forbid_unknown_fields=True,
)
"""A datetime as the ledger's transcoder stores it: ``{"_type_": "datetime_iso",
"_data_": ...}``, both keys and no other; ``data`` is the text."""

_ORIGINATOR_COLUMNS = frozenset({"originator_id", "originator_version"})
"""Fields the mapper sets from the row's columns, whatever the stored state says."""

_NONE = type(None)
_fromisoformat = datetime.fromisoformat


def _revive_time(value: Any) -> Any:
    """A stored datetime as the transcoder revives it (None and ``UNSET`` stay)."""
    return _fromisoformat(cast(Any, value).data) if type(value) is StoredTime else value


def revived_by_the_transcoder(value: dict[Any, Any]) -> bool:
    """Whether the transcoder's object hook turns the decoded object ``value`` into a
    value of a transcoding (exactly the two keys ``_type_`` and ``_data_``)."""
    return len(value) == 2 and "_type_" in value and "_data_" in value


def _revive_str_dict(value: Any) -> Any:
    """A ``dict[str, str]`` as the transcoder leaves it (None and ``UNSET`` stay), or
    ValueError if it would revive it as a transcoded value."""
    if type(value) is dict and revived_by_the_transcoder(value):
        raise ValueError("a transcoded value, not a dict[str, str]")
    return value


def _stored_type(hint: Any) -> tuple[Any, Callable[[Any], Any] | None] | None:
    """The type a value of ``hint`` is read as, and its reviver (None: none needed); None
    if this reading does not know ``hint``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_stored_type(a) for a in typing.get_args(hint)]
        if any(p is None for p in parts):
            return None
        known = cast(list[tuple[Any, Callable[[Any], Any] | None]], parts)
        revivers = [r for _, r in known if r is not None]
        if len(revivers) > 1:
            return None
        union: Any = typing.Union[tuple(t for t, _ in known)]  # noqa: UP007 - made at run time
        return union, revivers[0] if revivers else None
    if hint is None or hint is _NONE:
        return _NONE, None
    if hint in (int, str, bool):
        return hint, None
    if hint is datetime:
        return StoredTime, _revive_time
    if typing.get_origin(hint) is dict and typing.get_args(hint) == (str, str):
        return dict[str, str], _revive_str_dict
    return None


@dataclass(frozen=True)
class TypedState:
    """One event class's typed reading of its stored states."""

    decode: Callable[[bytes], Any]
    """The state's fields as attributes (raises ``msgspec.DecodeError`` unless the state
    is exactly as the class declares, see the module docs)."""
    revivers: tuple[tuple[str, Callable[[Any], Any]], ...]
    """The fields whose decoded value the transcoder would revive, each with the function
    that revives it as the transcoder does (raising ``ValueError`` where the mapper
    fails). Every other field's value is the mapper's as decoded."""

    def checked(self, plaintext: bytes) -> Any:
        """The state decoded, if it is exactly as the class declares and every transcoded
        value revives; else None."""
        try:
            state = self.decode(plaintext)
            for name, revive in self.revivers:
                revive(getattr(state, name))
        except ValueError:  # msgspec.DecodeError is one
            return None
        return state


def typed_state(cls: type[Any]) -> TypedState | None:
    """The typed reading of ``cls``'s stored states, or None if a field has a type it
    does not know (see the module docs)."""
    hints = typing.get_type_hints(cls)
    spec: list[Any] = []
    revivers: list[tuple[str, Callable[[Any], Any]]] = []
    for f in dataclasses.fields(cls):
        if f.name in _ORIGINATOR_COLUMNS:
            continue
        found = _stored_type(hints[f.name])
        if found is None:
            return None
        kind, reviver = found
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        spec.append((f.name, kind) if required else (f.name, kind, msgspec.UNSET))
        if reviver is not None:
            revivers.append((f.name, reviver))
    class_version = getattr(cls, "class_version", 1)
    spec.append(
        ("class_version", Literal[class_version])
        if class_version > 1
        else ("class_version", Literal[1], msgspec.UNSET)
    )
    struct = msgspec.defstruct(
        f"Stored{cls.__name__}", spec, kw_only=True, forbid_unknown_fields=True
    )
    return TypedState(msgspec.json.Decoder(struct).decode, tuple(revivers))
