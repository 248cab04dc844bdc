"""Errors a Task state can name in its Retry and Catch rules."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "InternalServerError",
        "InternalFailure",
        "RequestTimeout",
        "RequestTimeoutException",
        "ProvisionedThroughputExceededException",  # DynamoDB's throttle (on-demand tables too)
    }
)


class TransientAwsError(RuntimeError):
    """An AWS call failed in a way worth retrying (throttling, 5xx, timeout). The state machine retries it."""


def is_transient(exc: BaseException) -> bool:
    """True for throttling, server-side and connection errors from botocore."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in RETRYABLE_CODES or status >= 500
    return isinstance(exc, BotoCoreError)


def transient(what: str, exc: BaseException) -> TransientAwsError:
    """The TransientAwsError to raise for ``exc`` (throttling, 5xx, botocore's own timeouts and connection errors:
    ReadTimeoutError, ConnectTimeoutError, EndpointConnectionError), named ``<what>: <error code>``; the Task
    state's Retry, or the caller's next attempt, repeats the work."""
    return TransientAwsError(f"{what}: {error_code(exc)}")


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ClientError, else the exception's class name."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


class CommandNotSent(RuntimeError):
    """SSM refused SendCommand (a 4xx other than throttling): nothing runs on the instance. The state machine ends
    the execution in the path's failure outcome."""


class CommandOutcomeUnknown(RuntimeError):
    """SendCommand failed in a way that may come after SSM accepted it (5xx, timeout, lost connection). It is never
    re-sent (the trainer is signalled at most once): the state machine looks the command up by its comment."""
