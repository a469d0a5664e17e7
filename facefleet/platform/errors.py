"""Errors that carry their HTTP status: services raise them, the API renders them as problem JSON."""

from __future__ import annotations

from typing import Any


class FacefleetError(Exception):
    """Base error: a message that says what to fix, an HTTP status, optionally the offending field."""

    status_code: int = 400
    title: str = "Bad request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        status_code: int | None = None,
        report: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.report = report  # what was found, when it helps fix the input (a dataset's validation report)
        if status_code is not None:
            self.status_code = status_code


class InvalidInputError(FacefleetError):
    status_code = 422
    title = "Invalid input"


class NotFoundError(FacefleetError):
    status_code = 404
    title = "Not found"


class ConflictError(FacefleetError):
    status_code = 409
    title = "Conflict"


class AuthenticationError(FacefleetError):
    status_code = 401
    title = "Unauthorized"


class PermissionDeniedError(FacefleetError):
    status_code = 403
    title = "Forbidden"


class PayloadTooLargeError(FacefleetError):
    status_code = 413
    title = "Payload too large"
