"""What alutwin's gRPC services and clients share: a unary handler's exceptions as status codes, and channels."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import grpc

__all__ = ["Abort", "StatusOf", "open_channel", "unary_errors"]


class Abort(Exception):
    """A request a servicer refuses: a status code and a client-facing message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


StatusOf = Callable[[BaseException], tuple[grpc.StatusCode, str]]
"""A service's mapping of an exception to its status code and client-facing message."""


def unary_errors(
    status_of: StatusOf, before: Callable[[Any], None] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator for unary handlers ``method(self, request, context)``: an exception becomes the status code
    and message ``status_of`` gives it (one bad request never takes the server down). ``before(self)`` runs
    first and may raise too (e.g. while the service shuts down)."""

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def handler(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                if before is not None:
                    before(self)
                return method(self, request, context)
            except Exception as exc:
                code, message = status_of(exc)
            context.abort(code, message)

        return handler

    return decorate


def open_channel(
    address: str, *, root_certificates: bytes | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel to ``address``: TLS trusting the PEM ``root_certificates`` when given (the server's certificate
    must name the host of ``address``), else plaintext."""
    if root_certificates is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return grpc.secure_channel(address, creds, options=list(options))
    return grpc.insecure_channel(address, options=list(options))
