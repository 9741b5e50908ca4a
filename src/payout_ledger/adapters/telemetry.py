"""Traces and metrics through the OpenTelemetry API, and nothing when it is absent.

The library depends on the API only (the ``otel`` extra, ``opentelemetry-api``):
the host chooses the SDK and the exporter, and sets its providers whenever it
likes, before or after importing the library. Without the API installed, or
without a provider set, every function here does nothing, at the cost of a
function call.

The tracer and the meter are both named ``payout_ledger``, with the installed
version. Spans wrap the ledger's operations, never an HTTP request or a SQL
statement: the httpx, requests and psycopg instrumentations make those, as
children of the span here when they are installed.

Metric attributes are low-cardinality by construction: outcomes, error codes,
kinds and currencies, never the id of a payout, a service, a provider or an
account (those go in log records, as ``payout_ledger.*`` extras). Each metric,
and the series a Prometheus exporter makes of it (both names after the
``payout_ledger.`` or ``payout_ledger_`` prefix):

| instrument | kind | unit | Prometheus series | attributes |
|---|---|---|---|---|
| `releases` | counter | `{release}` | `releases_total` | `outcome` |
| `release.duration` | histogram | `s` | `release_duration_seconds` | `outcome` |
| `stripe.errors` | counter | `{error}` | `stripe_errors_total` | `code`, `operation` |
| `reconcile.mismatches` | counter | `{mismatch}` | `reconcile_mismatches_total` | `kind` |
| `payouts.in_flight` | gauge | `{payout}` | `payouts_in_flight` | |
| `reversals.in_flight` | gauge | `{reversal}` | `reversals_in_flight` | |
| `oldest_in_flight.age` | gauge | `s` | `oldest_in_flight_age_seconds` | |
| `projection.lag` | gauge | `{event}` | `projection_lag` | |
| `last_seal.age` | gauge | `s` | `last_seal_age_seconds` | |

The gauges are set by [`record_status`][payout_ledger.adapters.telemetry.record_status]
each time a ledger's status is computed. A gauge the status cannot give (no
read model yet, never sealed) keeps its last value, or is absent until it has one.
Other parts of the library add metrics of their own with
[`counter`][payout_ledger.adapters.telemetry.counter],
[`gauge`][payout_ledger.adapters.telemetry.gauge] and
[`histogram`][payout_ledger.adapters.telemetry.histogram], named
``payout_ledger.<something>``.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, ParamSpec, Protocol, TypeVar

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "DURATION_BUCKETS",
    "LIBRARY",
    "AttributeValue",
    "SpanHandle",
    "StatusLike",
    "count_reconcile_mismatch",
    "count_release",
    "count_stripe_error",
    "counter",
    "extras",
    "gauge",
    "histogram",
    "label",
    "record_status",
    "span",
    "traced",
]

LIBRARY: Final = "payout_ledger"
"""The name of the tracer, the meter and the loggers; every instrument and span name starts
with it."""

AttributeValue = str | bool | int | float
"""A value a span or a measurement can carry (``None`` values are left out)."""

DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Histogram boundaries for durations in seconds (advisory; a host's view wins)."""

_LABEL = re.compile(r"[a-z0-9_.]{1,64}")

_P = ParamSpec("_P")
_R = TypeVar("_R")


class StatusLike(Protocol):
    """What [`record_status`][payout_ledger.adapters.telemetry.record_status] reads from a
    ledger's status."""

    @property
    def in_flight(self) -> int: ...
    @property
    def reversals_in_flight(self) -> int: ...
    @property
    def oldest_in_flight_seconds(self) -> float | None: ...
    @property
    def projection_lag(self) -> int | None: ...
    @property
    def seconds_since_last_seal(self) -> float | None: ...


class SpanHandle:
    """The span of one operation, for attributes known only at its end (the outcome).

    Keyword names become ``payout_ledger.<name>`` attributes; ``None`` values are
    left out. Without a tracer provider it records nothing.
    """

    __slots__ = ("_span",)

    def __init__(self, span: Span | None = None) -> None:
        self._span = span

    @property
    def recording(self) -> bool:
        """Whether anything set here is recorded."""
        return self._span is not None and self._span.is_recording()

    def set(self, **attributes: AttributeValue | None) -> None:
        """Set attributes on the span."""
        if self._span is not None:
            self._span.set_attributes(_span_attributes(attributes))

    def fail(self, error_type: str) -> None:
        """Mark the operation failed without an exception (``error.type``, status ``ERROR``)."""
        if self._span is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_attribute("error.type", error_type)
            self._span.set_status(Status(StatusCode.ERROR, error_type))


_NO_SPAN: Final = SpanHandle()


class _State:
    """The API's modules, the tracer, the meter and the instruments, made on first use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loaded = False
        self.trace: ModuleType | None = None
        self.proxy_provider: type | None = None
        self.tracer: Tracer | None = None
        self.meter: Meter | None = None
        self.instruments: dict[str, tuple[str, Any]] = {}

    def load(self) -> None:
        with self.lock:
            if self.loaded:
                return
            try:
                from opentelemetry import metrics, trace
            except ImportError:  # the otel extra is not installed: everything is a no-op
                self.loaded = True
                return
            version = _version()
            self.trace = trace
            self.proxy_provider = trace.ProxyTracerProvider
            self.tracer = trace.get_tracer(LIBRARY, version)
            # A proxy meter until the host sets its provider; the instruments made
            # from it then start recording into the host's provider.
            self.meter = metrics.get_meter(LIBRARY, version)
            self.loaded = True


_state = _State()


def _version() -> str:
    try:
        return metadata.version("payout-ledger")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        return "0+unknown"


def _tracer() -> Tracer | None:
    """The library's tracer, or ``None`` when no host set a tracer provider."""
    if not _state.loaded:
        _state.load()
    trace = _state.trace
    if trace is None or isinstance(trace.get_tracer_provider(), _state.proxy_provider or ()):
        return None
    return _state.tracer


@contextmanager
def span(name: str, **attributes: AttributeValue | None) -> Iterator[SpanHandle]:
    """One operation's span, current while the block runs.

    ``name`` is ``payout_ledger.<operation>``; keyword attributes become
    ``payout_ledger.<key>``. An exception leaving the block sets the span's status to
    ``ERROR`` and ``error.type`` to the exception's class name; its message is not
    recorded (messages can carry ids). The exception propagates.
    """
    _check_name(name)
    tracer = _tracer()
    if tracer is None:
        yield _NO_SPAN
        return
    with tracer.start_as_current_span(
        name,
        attributes=_span_attributes(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        handle = SpanHandle(current)
        try:
            yield handle
        except BaseException as exc:
            handle.fail(type(exc).__name__)
            raise


def traced(
    name: str,
    describe: Callable[[Any], Mapping[str, AttributeValue | None]] | None = None,
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a function so that each call runs in [`span`][payout_ledger.adapters.telemetry.span]
    ``name``; ``describe(result)`` gives the attributes known at its end (called only when
    the span records)."""

    def decorate(func: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(func)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with span(name) as current:
                result = func(*args, **kwargs)
                if describe is not None and current.recording:
                    current.set(**describe(result))
                return result

        return wrapper

    return decorate


def _span_attributes(attributes: Mapping[str, AttributeValue | None]) -> dict[str, AttributeValue]:
    return {f"{LIBRARY}.{key}": value for key, value in attributes.items() if value is not None}


def _check_name(name: str) -> None:
    if not name.startswith(LIBRARY + "."):
        raise ValueError(f"telemetry names start with {LIBRARY}.: {name!r}")


def _instrument(kind: str, name: str, unit: str, description: str) -> Any:
    """The instrument ``name`` (made once), or ``None`` without the API.

    Raises ``ValueError`` for a name outside the library's or one already used
    for another kind of instrument.
    """
    found = _state.instruments.get(name)
    if found is not None and found[0] == kind:
        return found[1]
    if not _state.loaded:
        _state.load()
    meter = _state.meter
    if meter is None:
        return None
    _check_name(name)
    with _state.lock:
        found = _state.instruments.get(name)
        if found is None:
            made: Any
            if kind == "counter":
                made = meter.create_counter(name, unit=unit, description=description)
            elif kind == "gauge":
                made = meter.create_gauge(name, unit=unit, description=description)
            else:
                made = meter.create_histogram(
                    name,
                    unit=unit,
                    description=description,
                    explicit_bucket_boundaries_advisory=DURATION_BUCKETS if unit == "s" else None,
                )
            found = _state.instruments[name] = (kind, made)
    if found[0] != kind:
        raise ValueError(f"{name!r} is a {found[0]}, not a {kind}")
    return found[1]


def _labels(labels: Mapping[str, AttributeValue | None]) -> dict[str, AttributeValue]:
    return {key: value for key, value in labels.items() if value is not None}


def counter(
    name: str,
    amount: int = 1,
    *,
    unit: str = "1",
    description: str = "",
    **labels: AttributeValue | None,
) -> None:
    """Add ``amount`` to the counter ``name`` (``payout_ledger.<something>``).

    Give the unit as an annotation (``{cycle}``) for counts, so the Prometheus
    series is ``<name>_total``. Labels must take few values: never an id.
    """
    instrument = _instrument("counter", name, unit, description)
    if instrument is not None:
        instrument.add(amount, _labels(labels))


def gauge(
    name: str,
    value: float,
    *,
    unit: str = "1",
    description: str = "",
    **labels: AttributeValue | None,
) -> None:
    """Set the gauge ``name`` (``payout_ledger.<something>``) to ``value``."""
    instrument = _instrument("gauge", name, unit, description)
    if instrument is not None:
        instrument.set(value, _labels(labels))


def histogram(
    name: str,
    value: float,
    *,
    unit: str = "s",
    description: str = "",
    **labels: AttributeValue | None,
) -> None:
    """Record ``value`` in the histogram ``name``; durations in seconds (``unit="s"``)."""
    instrument = _instrument("histogram", name, unit, description)
    if instrument is not None:
        instrument.record(value, _labels(labels))


def label(value: object, *, missing: str = "unknown") -> str:
    """A value from outside (Stripe's error code, an event's type) fit for a metric label or
    a span attribute: lower-case letters, digits, ``_`` and ``.``, at most 64 characters;
    ``other`` for anything else and ``missing`` for nothing, so that a label takes few values
    whatever it is sent."""
    if value is None or value == "":
        return missing
    text = str(value).lower()
    return text if _LABEL.fullmatch(text) else "other"


def extras(**fields: object) -> dict[str, object]:
    """Structured extras for a log record: ``payout_ledger.<name>`` for each field given.

    ``logger.info("...", extra=extras(event_service_id=..., attempt=2))``; ids belong
    here (never in metrics), secrets nowhere.
    """
    return {f"{LIBRARY}.{key}": value for key, value in fields.items()}


def count_release(outcome: str, duration_seconds: float) -> None:
    """One release ended with ``outcome`` after ``duration_seconds``."""
    counter(
        "payout_ledger.releases",
        unit="{release}",
        description="Releases, by outcome.",
        outcome=outcome,
    )
    histogram(
        "payout_ledger.release.duration",
        duration_seconds,
        unit="s",
        description="How long a release took, Stripe's answer included.",
        outcome=outcome,
    )


def count_stripe_error(code: str | None, operation: str) -> None:
    """Stripe answered ``operation`` (``create_transfer``, ``retrieve_account``...) with an
    error (``code`` is Stripe's code or error type; ``None`` when there was no answer)."""
    counter(
        "payout_ledger.stripe.errors",
        unit="{error}",
        description="Errors from Stripe, by code and operation.",
        code=label(code),
        operation=operation,
    )


def count_reconcile_mismatch(kind: str, n: int = 1) -> None:
    """A reconciliation found ``n`` mismatches of ``kind``."""
    if n > 0:
        counter(
            "payout_ledger.reconcile.mismatches",
            n,
            unit="{mismatch}",
            description="Differences between the books and Stripe, by kind.",
            kind=kind,
        )


def record_status(status: StatusLike) -> None:
    """Set the gauges from a ledger's status (``PayoutLedger.status()`` calls this).

    With nothing in flight, the oldest in-flight age is 0. A projection lag or a
    seal age the status cannot give (``None``) leaves its gauge as it was.
    """
    gauge(
        "payout_ledger.payouts.in_flight",
        status.in_flight,
        unit="{payout}",
        description="Payouts with an attempt in flight.",
    )
    gauge(
        "payout_ledger.reversals.in_flight",
        status.reversals_in_flight,
        unit="{reversal}",
        description="Reversals with an attempt in flight.",
    )
    gauge(
        "payout_ledger.oldest_in_flight.age",
        status.oldest_in_flight_seconds or 0.0,
        unit="s",
        description="Age of the oldest attempt in flight, from its claim.",
    )
    if status.projection_lag is not None:
        gauge(
            "payout_ledger.projection.lag",
            status.projection_lag,
            unit="{event}",
            description="Events not yet in the payouts read model.",
        )
    if status.seconds_since_last_seal is not None:
        gauge(
            "payout_ledger.last_seal.age",
            status.seconds_since_last_seal,
            unit="s",
            description="Seconds since the log was last sealed.",
        )
