"""The shared server lifecycle (:mod:`alutwin.rpc`): addresses, binding errors, health and reflection, the order of
a stop's steps, and serving until a signal with the handlers restored."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from alutwin.rpc import (
    Abort,
    GrpcServer,
    bind,
    error_field,
    format_address,
    new_server,
    open_or_abort,
    serve_health_and_reflection,
    serve_until_signalled,
    status_mapping,
    stop_on_signals,
)
from alutwin.v1 import twin_pb2

SERVICE = "test.Service"
WAIT = 10.0


class _Recorder(GrpcServer):
    """A server without services of its own that records the lifecycle's hooks."""

    def __init__(self, grace_s: float = 0.25, drain_s: float = 0.0) -> None:
        server = new_server(2, "test-grpc")
        hs = health.HealthServicer(experimental_non_blocking=True)
        serve_health_and_reflection(server, [SERVICE], hs)
        super().__init__(server, hs, "127.0.0.1", bind(server, "127.0.0.1", 0), grace_s)
        self.calls: list = []
        self.drain_s = drain_s
        self.stop_graces: list[float] = []  # what the gRPC server's stop was given
        stop = server.stop

        def recorded_stop(grace: float | None) -> threading.Event:
            self.stop_graces.append(grace)
            return stop(grace)

        server.stop = recorded_stop

    def _started(self) -> None:
        self.calls.append("started")

    def _drain(self, grace: float) -> None:
        self.calls.append(("drain", grace, self.health_of(SERVICE)))
        time.sleep(self.drain_s)

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


@pytest.mark.parametrize("includes_drain", [True, False])
def test_the_grace_counts_from_the_start_of_the_stop_or_from_the_end_of_the_drain(includes_drain):
    server = _Recorder(grace_s=2.0, drain_s=0.5)
    server.grace_includes_drain = includes_drain
    server.start()
    server.stop()
    [given] = server.stop_graces
    if includes_drain:  # the drain's 0.5 s (and the health check in it) came out of the 2 s
        assert 0.0 < given <= 1.5
    else:  # the whole grace after the drain, less the few microseconds between the two clock reads
        assert 1.9 < given <= 2.0


def test_a_status_mapping_passes_aborts_maps_its_table_and_hides_the_rest(caplog):
    class Closed(Exception):
        pass

    class NotThere(KeyError):
        pass

    logger = logging.getLogger("test.rpc.service")
    status_of = status_mapping(
        {LookupError: grpc.StatusCode.NOT_FOUND, Closed: (grpc.StatusCode.UNAVAILABLE, "shutting down")},
        "the test service",
        logger,
    )
    assert status_of(Abort(grpc.StatusCode.ABORTED, "moved on")) == (grpc.StatusCode.ABORTED, "moved on")
    assert status_of(IndexError("no row 3")) == (grpc.StatusCode.NOT_FOUND, "no row 3")  # a subclass, its text
    assert status_of(NotThere("k")) == (grpc.StatusCode.NOT_FOUND, "'k'")
    assert status_of(Closed("/var/lib/secret.db")) == (grpc.StatusCode.UNAVAILABLE, "shutting down")
    with caplog.at_level(logging.ERROR, logger="test.rpc.service"):
        code, message = status_of(RuntimeError("/var/lib/secret.db is corrupt"))
    assert (code, message) == (grpc.StatusCode.INTERNAL, "internal error in the test service")
    [record] = caplog.records  # logged once, with its traceback, on the service's logger
    assert record.name == "test.rpc.service" and record.exc_info[1].args == ("/var/lib/secret.db is corrupt",)


def test_open_or_abort_returns_what_opens_and_aborts_with_the_status_of_what_fails():
    class Context:
        def abort(self, code: grpc.StatusCode, details: str) -> None:
            raise RuntimeError(f"aborted {code.name}: {details}")  # grpc's abort raises too

        def abort_with_status(self, status: Any) -> None:
            [(key, value)] = status.trailing_metadata
            detail = status_pb2.Status.FromString(value)
            bad = error_details_pb2.BadRequest()
            assert key == "grpc-status-details-bin" and detail.details[0].Unpack(bad)
            [v] = bad.field_violations
            raise RuntimeError(f"aborted {status.code.name}: {status.details} (field {v.field!r})")

    status_of = status_mapping(
        {ValueError: grpc.StatusCode.INVALID_ARGUMENT, KeyError: grpc.StatusCode.NOT_FOUND}, "the test service"
    )
    assert open_or_abort(status_of, Context(), lambda: "stream") == "stream"

    def fail(exc: Exception) -> Callable[[], str]:
        def opening() -> str:
            raise exc

        return opening

    with pytest.raises(RuntimeError, match=r"^aborted INVALID_ARGUMENT: cells = \[9\] is not a cell \(field ''\)$"):
        open_or_abort(status_of, Context(), fail(ValueError("cells = [9] is not a cell")))
    with pytest.raises(RuntimeError, match=r"^aborted NOT_FOUND: 'cell 9'$"):
        open_or_abort(status_of, Context(), fail(KeyError("cell 9")))


def test_an_invalid_argument_names_the_field_of_the_exception_or_of_the_message_head():
    request = twin_pb2.PredictRequest()
    assert error_field(None, "x0[3, 1] is not a finite number", request) == "x0[3, 1]"
    assert error_field(None, "x0[3, 1] is not a finite number", twin_pb2.PredictRequest) == "x0[3, 1]"
    assert error_field(None, "model.name is empty", request) == "model.name"
    assert error_field(None, "cells = [9] is not a cell", request) == ""  # not a field of PredictRequest
    assert error_field(None, "x0 is bad", b"raw bytes") == ""  # no message type known
    err = ValueError("bad")
    err.field = "page_token"  # type: ignore[attr-defined]
    assert error_field(err, "anything", request) == "page_token"


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
