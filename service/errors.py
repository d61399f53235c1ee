"""One exception hierarchy that knows no HTTP (TEI's error enum): the engine process raises and ships
these without importing a web framework; `http/error_mapping.py` maps each `kind` to a status at the edge."""
from __future__ import annotations


class ServiceError(Exception):
    kind = "internal"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(ServiceError):
    kind = "invalid_input"


class UnknownModel(ServiceError):
    kind = "unknown_model"


class TooLarge(ServiceError):
    kind = "too_large"


class Unauthorized(ServiceError):
    kind = "unauthorized"


class Overloaded(ServiceError):
    """Retryable: `retry_after` seconds is the queue's own estimate of when there will be room."""

    kind = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0, field: str | None = None):
        super().__init__(message, field)
        self.retry_after = retry_after


class DeadlineExceeded(ServiceError):
    kind = "deadline_exceeded"


class NotReady(ServiceError):
    kind = "not_ready"


class ShuttingDown(ServiceError):
    kind = "shutting_down"


class EngineDead(ServiceError):
    """The device failed in a way the process cannot recover from (vLLM's EngineDeadError): the engine
    exits and the orchestrator restarts the service."""

    kind = "engine_dead"


class Disabled(ServiceError):
    kind = "disabled"


class ClientGone(ServiceError):
    """The client closed the connection before its answer; nobody reads the response."""

    kind = "client_closed_request"

    def __init__(self, message: str = "client closed the connection"):
        super().__init__(message)


def error_class(kind: str) -> type[ServiceError]:
    """The error class of a `kind` (how errors cross from the engine process); unknown kinds are internal."""
    classes = {cls.kind: cls for cls in ServiceError.__subclasses__()}
    return classes.get(kind, ServiceError)


# A sticky device error leaves the CUDA context unusable: every later call fails the same way, so the
# only recovery is a new process. Matched on the message because torch raises these as RuntimeError
# (AcceleratorError, a subclass, from torch 2.8) with the driver's text.
FATAL_DEVICE_MARKERS = ("CUDA error", "illegal memory access", "device-side assert", "unspecified launch failure",
                        "CUBLAS_STATUS_EXECUTION_FAILED")


def is_fatal_device_error(exc: BaseException) -> bool:
    """Whether `exc` means the accelerator's context is dead (the engine must exit), not a failed batch."""
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in FATAL_DEVICE_MARKERS)
