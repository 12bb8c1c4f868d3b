"""The two ways the Deployment Manager API says no: an HTTP error, or a failed operation."""

from __future__ import annotations

from http import HTTPStatus


class ApiError(Exception):
    """An HTTP error in Google's JSON error format."""

    def __init__(self, status: HTTPStatus, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def body(self) -> dict:
        return {
            "error": {
                "code": int(self.status),
                "message": self.message,
                "status": {
                    400: "INVALID_ARGUMENT",
                    401: "UNAUTHENTICATED",
                    403: "PERMISSION_DENIED",
                    404: "NOT_FOUND",
                    409: "ALREADY_EXISTS" if self.reason == "alreadyExists" else "ABORTED",
                    412: "FAILED_PRECONDITION",
                }.get(int(self.status), "UNKNOWN"),
                "errors": [{"domain": "global", "reason": self.reason, "message": self.message}],
            }
        }


class OperationFailed(Exception):
    """A deployment-level failure: reported in a DONE operation's `error`, not as HTTP.

    `resource` names the resource DM stopped at (RESOURCE_ERROR); None for a failure before any
    resource was touched (an invalid config).
    """

    def __init__(self, code: str, message: str, resource: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.resource = resource


def not_found(what: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, "notFound", f"The object '{what}' is not found.")
