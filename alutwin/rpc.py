"""What alutwin's gRPC services and clients share: exceptions as status codes (:func:`status_mapping`, for unary
handlers :func:`unary_errors`, for opening a stream :func:`open_or_abort`), channels, and one server lifecycle.

A server is built by :func:`new_server`, gets health checking and reflection from
:func:`serve_health_and_reflection`, is bound by :func:`bind` (an :class:`OSError` naming the address when it
cannot listen) and is run by a :class:`GrpcServer` subclass: ``start``, ``begin_shutdown`` (health turns
NOT_SERVING), ``stop(grace)`` (drain, then stop), ``wait_for_termination``, and ``with``.
:func:`serve_until_signalled` runs one until SIGTERM or SIGINT and then stops it; :func:`stop_on_signals` is the
signal handling alone (an event set by either signal) for commands that are not servers.

Security every server shares (its settings are checked by :mod:`alutwin.security`): TLS from a certificate and key
file (:func:`server_credentials`) and a bearer token, sent by clients as :func:`bearer_metadata`;
:class:`CallInterceptor` checks
the token of the RPCs that need it, turns calls away while a server drains and reports every call to its metrics
(:mod:`alutwin.metrics`).
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from alutwin import reflection

__all__ = [
    "BALANCED_SCHEMES",
    "Abort",
    "CallInterceptor",
    "GrpcServer",
    "StatusOf",
    "abort",
    "bearer_metadata",
    "bind",
    "error_field",
    "format_address",
    "SERVER_KEEPALIVE",
    "new_server",
    "open_channel",
    "open_or_abort",
    "request_type",
    "serve_health_and_reflection",
    "serve_until_signalled",
    "server_credentials",
    "status_mapping",
    "stop_on_signals",
    "unary_errors",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class Abort(Exception):
    """A request a servicer refuses: a status code and a client-facing message; ``field`` is the request field at
    fault (its path, e.g. ``"commands[2].cell"``) for the BadRequest detail of an INVALID_ARGUMENT."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


_FIELD_PATH = re.compile(r"([A-Za-z_]\w*)(?:\[[^\]]{1,80}\]|\.[A-Za-z_]\w*)*")


def error_field(exc: BaseException | None, message: str, request: Any = None) -> str:
    """The request field an INVALID_ARGUMENT is about: the exception's ``field`` attribute when it has one, else
    the field path the message starts with (``"x0[3, 1] is not a finite number"``: ``"x0[3, 1]"``;
    ``"commands[2]: cell 7 appears twice"``: ``"commands[2]"``) when it starts with a field of ``request`` (a
    protobuf message), else "" (the message is about the request as a whole)."""
    field = getattr(exc, "field", None)
    if isinstance(field, str):
        return field
    match = _FIELD_PATH.match(message)
    fields = getattr(getattr(request, "DESCRIPTOR", None), "fields_by_name", {})
    return match.group(0) if match and match.group(1) in fields else ""


def abort(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    exc: BaseException | None = None,
    request: Any = None,
) -> None:
    """End the call with ``code`` and ``message`` (raises). An INVALID_ARGUMENT also carries a ``google.rpc.Status``
    in the ``grpc-status-details-bin`` trailer with one ``google.rpc.BadRequest`` field violation: the field
    (:func:`error_field` of ``exc``, ``message`` and ``request``, a message or a message class) and the
    message, for clients that read structured details (``grpc_status.rpc_status.from_call`` in Python)."""
    if code != grpc.StatusCode.INVALID_ARGUMENT:
        context.abort(code, message)
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=error_field(exc, message, request), description=message
    )
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    context.abort_with_status(rpc_status.to_status(status))


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
    first and may raise too (e.g. while the service shuts down). A handler that takes its request as bytes
    names the message type with :func:`request_type` (below this decorator), so that an INVALID_ARGUMENT
    still names the field."""

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        declared = getattr(method, "request_type", None)

        @functools.wraps(method)
        def handler(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                if before is not None:
                    before(self)
                return method(self, request, context)
            except Exception as exc:
                code, message = status_of(exc)
                error: BaseException = exc
            abort(context, code, message, error, request if declared is None else declared)

        return handler

    return decorate


def request_type(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a unary handler that receives its request as bytes with the protobuf message class it decodes them
    as (for :func:`unary_errors`' field violations)."""

    def mark(method: Callable[..., Any]) -> Callable[..., Any]:
        method.request_type = cls  # type: ignore[attr-defined]
        return method

    return mark


def open_or_abort(status_of: StatusOf, context: grpc.ServicerContext, open_: Callable[[], _T]) -> _T:
    """What ``open_()`` returns (a streaming handler's source, before its first response); an exception it raises
    aborts the call (:meth:`grpc.ServicerContext.abort` raises) with the status code and message ``status_of``
    gives it, the streaming twin of :func:`unary_errors`."""
    try:
        return open_()
    except Exception as exc:
        code, message = status_of(exc)
        error: BaseException = exc
    abort(context, code, message, error)  # raises: the call ends here
    raise AssertionError("unreachable: abort raises")


BALANCED_SCHEMES = ("dns:", "ipv4:", "ipv6:")
"""Targets that may name several servers, whose calls :func:`open_channel` spreads over all of them."""


def open_channel(
    address: str, *, root_certificates: bytes | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel to ``address``: TLS trusting the PEM ``root_certificates`` when given (the server's certificate
    must name the host of ``address``), else plaintext.

    A target with an explicit scheme of :data:`BALANCED_SCHEMES` gets client-side load balancing (gRPC's
    ``round_robin`` policy, unless ``options`` set ``grpc.lb_policy_name``): ``dns:///alutwin-twin:50061`` (a
    Kubernetes headless Service resolves to every ready replica, re-resolved as they come and go) or
    ``ipv4:10.0.0.5:50061,10.0.0.6:50061``. Each call goes to the next ready server; a server that goes away is
    skipped. A plain ``host:port`` keeps gRPC's default (the first address that answers).
    """
    opts = list(options)
    if address.startswith(BALANCED_SCHEMES) and not any(key == "grpc.lb_policy_name" for key, _ in opts):
        opts.append(("grpc.lb_policy_name", "round_robin"))
    if root_certificates is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return grpc.secure_channel(address, creds, options=opts)
    return grpc.insecure_channel(address, options=opts)


# ---------------------------------------------------------------------------------------------------------------
# Security: TLS and the bearer token


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token`` (``authorization: Bearer <token>``); none without a token."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def server_credentials(tls_cert: Path | None, tls_key: Path | None) -> grpc.ServerCredentials | None:
    """TLS credentials from the PEM certificate chain ``tls_cert`` and private key ``tls_key``; None without them.

    Raises
    ------
    OSError
        A file cannot be read (the message names it).
    """
    if tls_cert is None or tls_key is None:
        return None
    try:
        return grpc.ssl_server_credentials([(tls_key.read_bytes(), tls_cert.read_bytes())])
    except OSError as exc:
        raise OSError(f"cannot read the TLS key or certificate: {exc.strerror} ({exc.filename})") from None


class Admission(Protocol):
    """A drain gate: :meth:`enter` counts a call in (False once the gate is closed), :meth:`exit` counts it out."""

    def enter(self) -> bool: ...

    def exit(self) -> None: ...


_REFLECTION = "/grpc.reflection."  # server reflection: passed through, not counted
_NO_TOKEN_HEADER = (grpc.StatusCode.UNAUTHENTICATED, "this RPC needs the metadata 'authorization: Bearer <token>'")
_BAD_TOKEN = (grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid")


def _status_set(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """The status code the handler set or aborted with, if any."""
    return context.code()  # type: ignore[attr-defined]  # grpc has it since 1.38; types-grpcio lacks it


@contextlib.contextmanager
def _admitted(
    method: str,
    gate: Admission | None,
    draining: tuple[grpc.StatusCode, str],
    denial: tuple[grpc.StatusCode, str] | None,
    observe: Callable[[str, grpc.StatusCode, float], None] | None,
    failure: grpc.StatusCode,
    context: grpc.ServicerContext,
) -> Iterator[None]:
    """One call of ``method``: through the ``gate`` (``draining`` once it is closed) and refused with ``denial``
    if there is one; its status (``failure`` when it raises without one) and latency are observed when it ends."""
    start = time.perf_counter()
    entered = gate is not None and gate.enter()
    code = grpc.StatusCode.OK
    try:
        if gate is not None and not entered:
            context.abort(*draining)
        if denial is not None:
            context.abort(*denial)
        yield
        code = _status_set(context) or grpc.StatusCode.OK
    except BaseException:
        code = _status_set(context) or failure
        raise
    finally:
        if entered and gate is not None:
            gate.exit()
        if observe is not None:
            observe(method, code, time.perf_counter() - start)


class CallInterceptor(grpc.ServerInterceptor):
    """Checks the bearer token of the ``protected`` RPCs, turns the ``gated`` ones away once the ``gate`` closes
    and reports every call's method, status code and latency to ``observe`` (server reflection passes by).

    Parameters
    ----------
    token : str, optional
        The bearer token (:func:`resolve_token`). A protected call without ``authorization: Bearer <token>``, or
        with another token, gets UNAUTHENTICATED.
    protected : collection of str
        Full names (``/package.Service/Method``) of the RPCs that need the token.
    observe : callable, optional
        ``observe(method, code, seconds)`` once each call ends (e.g. :meth:`alutwin.metrics.RpcMetrics.observe`).
    without_token : (grpc.StatusCode, str), optional
        The answer to a protected call while the server has no token; None: the protected RPCs are then open to
        every client.
    gate : Admission, optional
        The drain gate of the ``gated`` RPCs.
    gated : tuple of str
        Prefixes of the full names of the RPCs that pass the gate (e.g. ``"/alutwin.v1.PredictionService/"``;
        health checks stay answered while the server drains).
    draining : (grpc.StatusCode, str)
        The answer to a gated call once the gate is closed.
    """

    def __init__(
        self,
        token: str | None,
        protected: Collection[str],
        observe: Callable[[str, grpc.StatusCode, float], None] | None = None,
        *,
        without_token: tuple[grpc.StatusCode, str] | None = None,
        gate: Admission | None = None,
        gated: tuple[str, ...] = (),
        draining: tuple[grpc.StatusCode, str] = (grpc.StatusCode.UNAVAILABLE, "the server is draining"),
    ) -> None:
        self._token = token.encode() if token else None
        self._protected = frozenset(protected)
        self._observe = observe
        self._without_token = without_token
        self._gate = gate
        self._gated = gated
        self._draining = draining

    def _denial(self, metadata: Sequence[tuple[str, Any]] | None) -> tuple[grpc.StatusCode, str] | None:
        if self._token is None:
            return self._without_token
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            return _NO_TOKEN_HEADER
        value = values[0] if isinstance(values[0], bytes) else str(values[0]).encode()
        if len(values) > 1 or not hmac.compare_digest(value, b"Bearer " + self._token):
            return _BAD_TOKEN
        return None

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None], details: Any
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        method = details.method
        if handler is None or method.startswith(_REFLECTION):
            return handler
        denial = self._denial(details.invocation_metadata) if method in self._protected else None
        gate = self._gate if method.startswith(self._gated) else None
        draining, observe = self._draining, self._observe

        def admitted(failure: grpc.StatusCode, context: grpc.ServicerContext) -> Any:
            return _admitted(method, gate, draining, denial, observe, failure, context)

        single = handler.unary_unary or handler.stream_unary
        if single is not None:

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                with admitted(grpc.StatusCode.UNKNOWN, context):
                    return single(request, context)

            make = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary is not None
                else grpc.stream_unary_rpc_method_handler
            )
            return make(unary, handler.request_deserializer, handler.response_serializer)
        streaming = handler.unary_stream or handler.stream_stream
        if streaming is None:
            return handler

        def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with admitted(grpc.StatusCode.CANCELLED, context):  # raised without a status: the client left
                yield from streaming(request, context)

        make = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream is not None
            else grpc.stream_stream_rpc_method_handler
        )
        return make(stream, handler.request_deserializer, handler.response_serializer)


# ---------------------------------------------------------------------------------------------------------------
# Building a server


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:50051``)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


SERVER_KEEPALIVE: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
)
"""Server options that let clients ping every 5 s or more (gRPC's default answers pings more often than every
5 min with GOAWAY ``too_many_pings``, which broke the bridge's keepalive of 10 s into reconnects)."""


def new_server(
    max_workers: int,
    thread_name_prefix: str,
    *,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Server:
    """A gRPC server on a pool of ``max_workers`` threads that never shares its port with another process
    (``grpc.so_reuseport`` off: a second server on a taken port fails to bind instead of stealing calls), and that
    accepts the keepalive pings of long-lived streams (:data:`SERVER_KEEPALIVE`)."""
    pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
    return grpc.server(
        pool, interceptors=list(interceptors), options=[("grpc.so_reuseport", 0), *SERVER_KEEPALIVE, *options]
    )


def serve_health_and_reflection(
    server: grpc.Server, services: Sequence[str], health_servicer: health.HealthServicer
) -> None:
    """Add ``health_servicer`` (``""`` and every name of ``services`` set SERVING) and reflection (v1 and v1alpha,
    :mod:`alutwin.reflection`) of ``services``, the health service and reflection itself to ``server``."""
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *services):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*services, health.SERVICE_NAME), server)


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
