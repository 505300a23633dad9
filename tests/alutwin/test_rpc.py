"""The shared server lifecycle (:mod:`alutwin.rpc`): addresses, binding errors, health and reflection, the order of
a stop's steps, and serving until a signal with the handlers restored."""

from __future__ import annotations

import os
import signal
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from alutwin.rpc import (
    GrpcServer,
    bind,
    format_address,
    new_server,
    serve_health_and_reflection,
    serve_until_signalled,
    stop_on_signals,
)

SERVICE = "test.Service"
WAIT = 10.0


class _Recorder(GrpcServer):
    """A server without services of its own that records the lifecycle's hooks."""

    def __init__(self, grace_s: float = 0.25) -> None:
        server = new_server(2, "test-grpc")
        hs = serve_health_and_reflection(server, [SERVICE])
        super().__init__(server, hs, "127.0.0.1", bind(server, "127.0.0.1", 0), grace_s)
        self.calls: list = []

    def _started(self) -> None:
        self.calls.append("started")

    def _drain(self, grace: float) -> None:
        self.calls.append(("drain", grace, self.health_of(SERVICE)))

    def _close(self) -> None:
        self.calls.append("close")

    def health_of(self, service: str) -> str:
        with grpc.insecure_channel(self.address) as channel:
            r = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)


def test_addresses():
    assert format_address("127.0.0.1", 50051) == "127.0.0.1:50051"
    assert format_address("::1", 7) == "[::1]:7" and format_address("[::1]", 7) == "[::1]:7"
    assert format_address("localhost", 0) == "localhost:0"


def test_a_taken_port_is_a_clear_error():
    with _Recorder() as first:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port} "):
            bind(new_server(1, "test-grpc"), "127.0.0.1", first.port)


def test_a_stop_reports_not_serving_then_drains_then_closes():
    server = _Recorder(grace_s=0.25)
    server.start()
    assert server.address == f"127.0.0.1:{server.port}"
    assert server.health_of("") == "SERVING" and server.health_of(SERVICE) == "SERVING"
    server.stop()
    server.stop(5.0)  # a second stop does nothing
    assert server.calls == ["started", ("drain", 0.25, "NOT_SERVING"), "close"]
    assert server.wait_for_termination(WAIT) is False  # stopped: no timeout


def test_serve_until_a_signal_then_stop_and_restore_the_handlers():
    server = _Recorder()
    events: list[str] = []
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        serve_until_signalled(
            server, on_serving=lambda: events.append("serving"), on_signal=lambda: events.append("signal")
        )
    finally:
        timer.cancel()
    assert events == ["serving", "signal"] and server.calls[0] == "started" and server.calls[-1] == "close"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_failed_start_still_stops_the_server():
    server = _Recorder()

    def fail() -> None:
        raise RuntimeError("the banner could not be printed")

    with pytest.raises(RuntimeError, match="banner"):
        serve_until_signalled(server, on_serving=fail)
    assert server.calls[-1] == "close"


def test_signals_are_handled_only_from_the_main_thread():
    before = signal.getsignal(signal.SIGINT)
    seen: list = []

    def elsewhere() -> None:
        with stop_on_signals() as stop:
            seen.append((signal.getsignal(signal.SIGINT) is before, stop.is_set()))

    t = threading.Thread(target=elsewhere)
    t.start()
    t.join(WAIT)
    assert seen == [(True, False)]  # nothing installed off the main thread
    with stop_on_signals() as stop:
        assert signal.getsignal(signal.SIGINT) is not before
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.wait(WAIT)  # SIGINT sets the event instead of raising KeyboardInterrupt
    assert signal.getsignal(signal.SIGINT) is before
