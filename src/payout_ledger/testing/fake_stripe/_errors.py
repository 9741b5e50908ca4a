"""Stripe-shaped API errors raised by the fake's endpoints."""

from __future__ import annotations

from typing import Any

__all__ = ["ParamError", "StripeError", "resource_missing"]


class StripeError(Exception):
    """An API error rendered as Stripe's ``{"error": {...}}`` body.

    ``stored`` tells the idempotency layer whether the response is saved under
    the request's idempotency key: true for errors that happen once the
    endpoint is executing (Stripe replays those), false otherwise.
    """

    stored: bool = True

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        """Return the JSON body, leaving out fields that do not apply."""
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code}"
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


class ParamError(StripeError):
    """A 400 for parameters that fail validation before the endpoint executes.

    Stripe does not save these under the idempotency key, so a corrected retry
    with the same key runs normally.
    """

    stored = False

    def __init__(self, message: str, *, param: str, code: str | None = None) -> None:
        super().__init__(400, "invalid_request_error", message, code=code, param=param)


def resource_missing(
    kind: str, object_id: str, *, param: str | None = None, status: int = 404
) -> StripeError:
    """Build Stripe's ``No such <kind>: '<id>'`` error."""
    return StripeError(
        status,
        "invalid_request_error",
        f"No such {kind}: '{object_id}'",
        code="resource_missing",
        param=param,
    )
