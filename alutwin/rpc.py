"""What alutwin's gRPC services and clients share: exceptions as status codes (:func:`status_mapping`, for unary
handlers :func:`unary_errors`, for opening a stream :func:`open_or_abort`), channels, and one server lifecycle.

A server is built by :func:`new_server`, gets health checking and reflection from
:func:`serve_health_and_reflection`, is bound by :func:`bind` (an :class:`OSError` naming the address when it
cannot listen) and is run by a :class:`GrpcServer` subclass: ``start``, ``begin_shutdown`` (health turns
NOT_SERVING), ``stop(grace)`` (drain, then stop), ``wait_for_termination``, and ``with``.
:func:`serve_until_signalled` runs one until SIGTERM or SIGINT and then stops it; :func:`stop_on_signals` is the
signal handling alone (an event set by either signal) for commands that are not servers.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

__all__ = [
    "Abort",
    "GrpcServer",
    "StatusOf",
    "bind",
    "format_address",
    "new_server",
    "open_channel",
    "open_or_abort",
    "serve_health_and_reflection",
    "serve_until_signalled",
    "status_mapping",
    "stop_on_signals",
    "unary_errors",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class Abort(Exception):
    """A request a servicer refuses: a status code and a client-facing message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


StatusOf = Callable[[BaseException], tuple[grpc.StatusCode, str]]
"""A service's mapping of an exception to its status code and client-facing message."""


def status_mapping(
    table: Mapping[type[BaseException], grpc.StatusCode | tuple[grpc.StatusCode, str]],
    service: str,
    logger: logging.Logger = log,
) -> StatusOf:
    """A service's :data:`StatusOf`: an :class:`Abort` gives its own code and message; else the first type of
    ``table`` (in order) the exception is an instance of gives its code, with the exception's text as the message,
    or its ``(code, message)``; anything else is logged to ``logger`` with its traceback and answered INTERNAL,
    ``"internal error in <service>"`` (no traces or paths reach the client).

    Parameters
    ----------
    table : mapping
        Exception type -> status code, or -> (status code, fixed client-facing message).
    service : str
        The service as the INTERNAL message names it, e.g. ``"the plant service"``.
    logger : logging.Logger
        Where an unexpected exception is logged (default this module's).
    """
    entries = tuple(table.items())

    def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
        if isinstance(exc, Abort):
            return exc.code, exc.message
        for kind, status in entries:
            if isinstance(exc, kind):
                return status if isinstance(status, tuple) else (status, str(exc))
        logger.error("unexpected error in %s", service, exc_info=exc)
        return grpc.StatusCode.INTERNAL, f"internal error in {service}"

    return status_of


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


def open_or_abort(status_of: StatusOf, context: grpc.ServicerContext, open_: Callable[[], _T]) -> _T:
    """What ``open_()`` returns (a streaming handler's source, before its first response); an exception it raises
    aborts the call (:meth:`grpc.ServicerContext.abort` raises) with the status code and message ``status_of``
    gives it, the streaming twin of :func:`unary_errors`."""
    try:
        return open_()
    except Exception as exc:
        code, message = status_of(exc)
    context.abort(code, message)  # raises: the call ends here


def open_channel(
    address: str, *, root_certificates: bytes | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel to ``address``: TLS trusting the PEM ``root_certificates`` when given (the server's certificate
    must name the host of ``address``), else plaintext."""
    if root_certificates is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return grpc.secure_channel(address, creds, options=list(options))
    return grpc.insecure_channel(address, options=list(options))


# ---------------------------------------------------------------------------------------------------------------
# Building a server


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:50051``)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def new_server(
    max_workers: int,
    thread_name_prefix: str,
    *,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Server:
    """A gRPC server on a pool of ``max_workers`` threads that never shares its port with another process
    (``grpc.so_reuseport`` off: a second server on a taken port fails to bind instead of stealing calls)."""
    pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
    return grpc.server(pool, interceptors=list(interceptors), options=[("grpc.so_reuseport", 0), *options])


def serve_health_and_reflection(
    server: grpc.Server, services: Sequence[str], health_servicer: health.HealthServicer
) -> None:
    """Add ``health_servicer`` (``""`` and every name of ``services`` set SERVING) and reflection of ``services``,
    the health service and reflection itself to ``server``."""
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *services):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)


def bind(server: grpc.Server, host: str, port: int, credentials: grpc.ServerCredentials | None = None) -> int:
    """Bind ``server`` to ``host:port`` (port 0: a free one), with TLS when ``credentials`` are given; returns
    the port.

    Raises
    ------
    OSError
        The address is in use or not available here (the message names it).
    """
    address = format_address(host, port)
    try:
        bound = (
            server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
        )
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {address} (address in use or not available)")
    return bound


# ---------------------------------------------------------------------------------------------------------------
# Running a server


class GrpcServer:
    """A bound gRPC server with health checking: :meth:`start`, :meth:`begin_shutdown`, :meth:`stop`; also a
    context manager (start on enter, stop on exit).

    Subclasses hook in what runs beside the server (:meth:`_started`), what ends before the server stops
    (:meth:`_drain`: streams, calls in flight) and what is released after (:meth:`_close`), and say when the
    grace of the calls in flight starts (:attr:`grace_includes_drain`).

    Parameters
    ----------
    server : grpc.Server
        Bound, not started.
    health_servicer : HealthServicer
        The server's health service.
    host, port : str, int
        Where it listens (``address`` is ``host:port``).
    grace_s : float
        Default seconds that calls in flight get to finish when the server stops.
    """

    grace_includes_drain: bool = True
    """Whether a stop's grace counts from the start of the stop, :meth:`_drain` included (a drain that waits for
    the calls in flight itself), or from the end of :meth:`_drain` (the calls get the whole grace after it)."""

    def __init__(
        self, server: grpc.Server, health_servicer: health.HealthServicer, host: str, port: int, grace_s: float
    ) -> None:
        self.grpc_server = server
        self.health = health_servicer
        self.port = port
        self.address = format_address(host, port)
        self.grace_s = grace_s
        self._stopped = False
        self._stop_lock = threading.Lock()

    def start(self) -> None:
        """Start serving."""
        self.grpc_server.start()
        self._started()

    def begin_shutdown(self) -> None:
        """Report NOT_SERVING on every health service name; calls are still answered until :meth:`stop`."""
        self.health.enter_graceful_shutdown()

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, drain, stop the server (cancelling the calls still running once ``grace`` s,
        default ``grace_s``, have passed since the stop began, or since the drain ended: see
        :attr:`grace_includes_drain`), then release what the server held. Only the first call does anything."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        grace = self.grace_s if grace is None else grace
        began = time.monotonic()
        self.begin_shutdown()
        self._drain(grace)
        if not self.grace_includes_drain:
            began = time.monotonic()
        self.grpc_server.stop(max(0.0, began + grace - time.monotonic())).wait()
        self._close()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops, or ``timeout`` s pass; True if the timeout passed first (gRPC's own
        convention)."""
        return self.grpc_server.wait_for_termination(timeout)

    def _started(self) -> None:
        """Runs once the gRPC server has started."""

    def _drain(self, grace: float) -> None:
        """Runs after health turned NOT_SERVING and before the gRPC server stops; may wait up to ``grace`` s."""

    def _close(self) -> None:
        """Runs after the gRPC server stopped."""

    def __enter__(self) -> GrpcServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def stop_on_signals(signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[threading.Event]:
    """An event set on SIGTERM or SIGINT while the block runs.

    The handlers are installed only in the main thread (elsewhere the event is set by nobody but the caller)
    and the previous handlers are restored when the block ends.
    """
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_until_signalled(
    server: GrpcServer,
    *,
    on_serving: Callable[[], None] | None = None,
    on_signal: Callable[[], None] | None = None,
    poll_s: float = 0.1,
) -> None:
    """Start ``server``, call ``on_serving()``, wait for SIGTERM or SIGINT (:func:`stop_on_signals`), call
    ``on_signal()`` and stop the server with its default grace; the server is stopped also when anything before
    raises. ``poll_s`` is how often the wait wakes (signal handlers run between the waits)."""
    with stop_on_signals() as stop:
        try:
            server.start()
            if on_serving is not None:
                on_serving()
            while not stop.wait(poll_s):
                pass
            if on_signal is not None:
                on_signal()
        finally:
            server.stop()
