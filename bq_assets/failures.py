"""The one way a step fails: every error becomes one clear ``dg.Failure`` here, and only here.

Our own errors are ``BqAssetsError``s: their message is the whole story, and they say whether
a retry can help. Errors of the libraries the steps call (Google's clients, requests, gRPC) are
first translated into ``BqAssetsError``s: a denied permission (not retried), an unreachable
service named with its endpoint (retried), any other answer of a Google API with its status
and message (retried only when Google says it is transient). The factory wraps every asset and
check body with ``failing_clearly``, so no body has to remember it. Anything else is a bug in
this project and keeps its stack trace.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import dagster as dg
import grpc
import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions

from bq_assets.engine.bigquery_metering import bytes_billed_limit_error, refused_for_bytes_billed
from bq_assets.engine.redaction import without_email_addresses
from bq_assets.errors import BqAssetsError, ServiceUnreachableError

F = TypeVar("F", bound=Callable[..., Any])

UNREACHABLE = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    api_exceptions.RetryError,
    api_exceptions.ServiceUnavailable,
    auth_exceptions.TransportError,
    ConnectionError,
)
#: Answers of a Google API that a new attempt may not meet again.
TRANSIENT_ANSWERS = (
    api_exceptions.TooManyRequests,
    api_exceptions.InternalServerError,
    api_exceptions.BadGateway,
    api_exceptions.GatewayTimeout,
)


def _reasons(exc: api_exceptions.GoogleAPICallError) -> set[str]:
    return {str(error.get("reason")) for error in exc.errors or [] if isinstance(error, dict)}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


def _unreachable_service(exc: BaseException, endpoints: Mapping[str, str]) -> str:
    """The service whose address the error mentions, with its endpoint (else all of them)."""
    text = f"{exc!r} {exc.__cause__!r} {exc.__context__!r}"
    for service, endpoint in endpoints.items():
        addresses = re.findall(r"[\w.-]+:\d+|[\w-]+(?:\.[\w-]+)+", endpoint.split("://")[-1])
        ports = [f"port={a.rpartition(':')[2]}" for a in addresses if ":" in a]
        if any(needle in text for needle in addresses + ports):
            return f"{service} at {endpoint}"
    return " or ".join(f"{service} at {endpoint}" for service, endpoint in endpoints.items())


def as_bq_assets_error(exc: Exception, endpoints: Mapping[str, str]) -> BqAssetsError | None:
    """``exc`` as the ``BqAssetsError`` a user can act on, or None when it is none we know
    (a bug: it keeps its stack trace). ``endpoints`` maps the step's services to where they
    are, to name the one that did not answer."""
    if isinstance(exc, BqAssetsError):
        return exc
    if isinstance(exc, api_exceptions.GoogleAPICallError) and refused_for_bytes_billed(exc):
        return bytes_billed_limit_error(exc)
    if isinstance(exc, api_exceptions.Forbidden) and not _reasons(exc) & {"rateLimitExceeded"}:
        return BqAssetsError(
            f"permission denied: {_short(exc)} Grant the permission it names to the service "
            "account (docs/deploying.md lists every permission the pipeline needs)."
        )
    if isinstance(exc, UNREACHABLE):
        where = _unreachable_service(exc, endpoints)
        return ServiceUnreachableError(f"{where} is unreachable: {_short(exc)}")
    if isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE:
        where = _unreachable_service(exc, endpoints)
        return ServiceUnreachableError(f"{where} is unreachable: {exc.details()}")
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        transient = isinstance(exc, TRANSIENT_ANSWERS) or bool(
            _reasons(exc) & {"rateLimitExceeded"}
        )
        return BqAssetsError(_short(exc), retryable=transient)
    return None


def as_failure(exc: BqAssetsError) -> dg.Failure:
    """The step failure the UI, the run's failure report and alerts show for ``exc``."""
    return dg.Failure(
        description=without_email_addresses(str(exc)),
        metadata=exc.metadata,
        allow_retries=exc.retryable,
    )


def endpoints_of(resources: Mapping[str, Any]) -> dict[str, str]:
    """Service name → endpoint of every resource among ``resources`` that names its service
    (``service_name``) and where it is (``endpoint``)."""
    found = {}
    for resource in resources.values():
        service = getattr(type(resource), "service_name", None)
        if not isinstance(service, str):
            continue
        try:
            found[service] = str(resource.endpoint)
        except Exception:  # the endpoint itself cannot be told (e.g. the stack is gone)
            found[service] = "(endpoint unknown)"
    return found


@contextmanager
def reported_as_failure(**resources: Any) -> Iterator[None]:
    """Inside: every error a user can act on leaves as one ``dg.Failure`` (see the module)."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as exc:
        error = as_bq_assets_error(exc, endpoints_of(resources))
        if error is None:
            raise
        raise as_failure(error) from None


def failing_clearly(body: F) -> F:
    """``body`` (an asset's or a check's function, plain or a generator) with its errors
    reported as one ``dg.Failure`` each. Dagster sees the same parameters and resources: the
    wrapper carries ``body``'s signature, annotations resolved."""
    if inspect.isgeneratorfunction(body):

        @functools.wraps(body)
        def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with reported_as_failure(**kwargs):
                yield from body(*args, **kwargs)

        wrapper: Callable[..., Any] = generator
    else:

        @functools.wraps(body)
        def function(*args: Any, **kwargs: Any) -> Any:
            with reported_as_failure(**kwargs):
                return body(*args, **kwargs)

        wrapper = function
    wrapper.__signature__ = inspect.signature(body, eval_str=True)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
