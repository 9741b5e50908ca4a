"""Decoding of Stripe's ``application/x-www-form-urlencoded`` bracket syntax.

Stripe's v1 API takes nested parameters as flat form fields:
``metadata[order]=42``, ``created[gte]=1700000000``, ``expand[0]=destination``
(``expand[]=destination`` is accepted too).  `parse_form` turns them back
into nested dicts and lists.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

__all__ = ["FormError", "FormValue", "Params", "parse_form"]

FormValue = str | list["FormValue"] | dict[str, "FormValue"]
"""One decoded parameter value: a string, a list or a nested hash."""

Params = dict[str, FormValue]
"""The decoded parameters of one request."""

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")

# Hashes whose keys are user data: never turned into lists even when the keys
# happen to be "0", "1", ...
_FREE_FORM_HASHES = frozenset({"metadata"})
# ``metadata[<key>]`` whose key holds a square bracket (``metadata[a[b]]``):
# the bracket syntax cannot split it, so the whole key is kept for the
# parameter validation to refuse with Stripe's metadata rules.
_FREE_FORM_FIELD = re.compile(r"^(" + "|".join(sorted(_FREE_FORM_HASHES)) + r")\[(.*)\]$", re.S)


class FormError(ValueError):
    """A form field name or structure that cannot be decoded."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def parse_form(encoded: str) -> Params:
    """Decode a form-encoded body or query string into nested parameters.

    Hashes whose keys are exactly ``"0"``..``"n-1"`` become lists, except
    ``metadata`` hashes, whose keys are free-form.  Raises `FormError`
    for a malformed field name or a field used both as a scalar and a hash.
    """
    root: dict[str, FormValue] = {}
    for name, value in parse_qsl(encoded, keep_blank_values=True):
        match = _KEY.match(name)
        if match is not None:
            path = [match.group(1), *_SEGMENT.findall(match.group(2))]
        elif (free_form := _FREE_FORM_FIELD.match(name)) is not None:
            path = [free_form.group(1), free_form.group(2)]
        else:
            raise FormError(f"Invalid parameter name: {name}", name)
        _insert(root, path, value, name)
    return {key: _finalize(value, key) for key, value in root.items()}


def _insert(root: dict[str, FormValue], path: list[str], value: str, name: str) -> None:
    node = root
    for depth, segment in enumerate(path):
        key = segment if segment != "" else str(len(node))
        if depth == len(path) - 1:
            if isinstance(node.get(key), dict):
                raise FormError(f"Invalid hash: {name}", name)
            node[key] = value
            return
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise FormError(f"Invalid hash: {name}", name)
        node = child


def _finalize(value: FormValue, key: str) -> FormValue:
    if not isinstance(value, dict):
        return value
    children = {k: _finalize(v, k) for k, v in value.items()}
    indices = [str(i) for i in range(len(children))]
    if key not in _FREE_FORM_HASHES and children and sorted(children) == sorted(indices):
        return [children[i] for i in indices]
    return children
