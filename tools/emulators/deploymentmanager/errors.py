"""The two ways the Deployment Manager API says no: an HTTP error, or a failed operation."""

from __future__ import annotations

from http import HTTPStatus


class ApiError(Exception):
    """An HTTP error in Google's JSON error format. `detail` is `errors[].message` when it is
    not the message itself; `details` the google.rpc details (ErrorInfo, ...)."""

    def __init__(
        self,
        status: HTTPStatus,
        reason: str,
        message: str,
        detail: str | None = None,
        details: list[dict] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.detail = detail or message
        self.details = details or []

    def body(self) -> dict:
        body = {
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
                "errors": [{"domain": "global", "reason": self.reason, "message": self.detail}],
            }
        }
        if self.details:
            body["error"]["details"] = self.details
        return body


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


def insufficient_scopes(service: str, rpc_method: str | None = None) -> ApiError:
    """Google's 403 for a token without any scope the method accepts: message "Request had
    insufficient authentication scopes.", errors[].reason insufficientPermissions, and an
    ErrorInfo ACCESS_TOKEN_SCOPE_INSUFFICIENT naming the service (and the RPC method where the
    service's naming of it is known)."""
    metadata = {"service": f"{service}.googleapis.com"}
    if rpc_method:
        metadata["method"] = rpc_method
    return ApiError(
        HTTPStatus.FORBIDDEN,
        "insufficientPermissions",
        "Request had insufficient authentication scopes.",
        detail="Insufficient Permission",
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                "domain": "googleapis.com",
                "metadata": metadata,
            }
        ],
    )
