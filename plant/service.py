"""The gRPC ``alutwin.v1.PlantService``: a thin servicer over :class:`plant.potline.Potline`.

:func:`create_server` builds a bound, not yet started server (port 0 allowed) with health checking, reflection,
the interceptor (the token of the commands, metrics of every call) and optionally TLS and a Prometheus
``/metrics`` endpoint; :func:`serve` runs one until SIGTERM/SIGINT and then drains: health turns NOT_SERVING,
the clock stops, streams end, new calls get UNAVAILABLE and calls in flight get ``grace_s`` to finish. In
real-time mode a clock thread advances the potline every ``dt / real_time_factor`` seconds of wall time. Each
stream has a bounded queue (:mod:`plant.streams`): a slow reader loses its oldest messages (counted) instead of
slowing the clock.

The RPCs that change the plant (:data:`COMMAND_METHODS`) need ``authorization: Bearer <token>`` when the config
has a token; without one they are open to every client (the default host is loopback).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO, cast

import grpc
from grpc_health.v1 import health, health_pb2

from alutwin.cli import CliError
from alutwin.codec import signal_to_pb
from alutwin.metrics import MetricsServer, RpcMetrics
from alutwin.rpc import (
    Abort,
    CallInterceptor,
    GrpcServer,
    bind,
    format_address,
    new_server,
    open_or_abort,
    serve_health_and_reflection,
    serve_until_signalled,
    server_credentials,
    status_mapping,
    unary_errors,
)
from alutwin.v1 import common_pb2, plant_pb2, plant_pb2_grpc
from plant.config import COMMANDS, PlantConfig
from plant.params import SPEC_VERSION
from plant.potline import (
    OUTPUTS,
    CellFaulted,
    CellSnapshot,
    InvalidCommand,
    Potline,
    UnknownCell,
)
from plant.scenarios import ScenarioStatus
from plant.signals import INPUTS, STATES
from plant.streams import Broadcaster, StreamClosed, Subscriber, TooManyStreams

__all__ = [
    "COMMAND_METHODS",
    "DEFAULT_PORT",
    "SERVICE_NAME",
    "PlantRuntime",
    "PlantServer",
    "PlantServicer",
    "create_server",
    "plant_metrics",
    "scenario_status_pb",
    "serve",
    "snapshot_to_pb",
]

log = logging.getLogger(__name__)

SERVICE_NAME = plant_pb2.DESCRIPTOR.services_by_name["PlantService"].full_name
"""``"alutwin.v1.PlantService"``."""

DEFAULT_PORT = 50051

_READ_ONLY = frozenset({"GetInfo", "GetState", "StreamMeasurements"})
COMMAND_METHODS = frozenset(
    f"/{SERVICE_NAME}/{m.name}"
    for m in plant_pb2.DESCRIPTOR.services_by_name["PlantService"].methods
    if m.name not in _READ_ONLY
)
"""Full names of the RPCs that change the plant (``SetInputs``, ``Step``: every PlantService RPC but the read-only
``GetInfo``, ``GetState`` and ``StreamMeasurements``); they need the token when the server has one."""

_POLL_S = 0.25  # how often a waiting stream checks that its client is still there


class PlantRuntime:
    """The potline with its subscribers and, in real-time mode, its clock: what the servicer talks to.

    Parameters
    ----------
    potline : Potline
        The simulated cells.
    config : PlantConfig
        Clock, stream and step settings.
    on_clock_failure : callable, optional
        Called once if the clock thread stops on an unexpected error.
    """

    def __init__(
        self, potline: Potline, config: PlantConfig, on_clock_failure: Callable[[], None] | None = None
    ) -> None:
        self.potline = potline
        self.config = config
        self.broadcaster = Broadcaster(config.stream_queue_size, config.max_streams)
        self._advance_lock = threading.Lock()  # one step and its publication happen together
        self._step_call_lock = threading.Lock()  # one Step call's n steps are consecutive
        self._stop = threading.Event()
        self._on_clock_failure = on_clock_failure
        self._clock: threading.Thread | None = None
        self._streams_lock = threading.Lock()
        self._streams: set[Subscriber] = set()
        self._dropped_by_ended = 0  # messages dropped by streams that have ended

    @property
    def stepped(self) -> bool:
        return self.config.stepped

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        """Start the clock (real-time mode only)."""
        if self.stepped or self._clock is not None:
            return
        self._clock = threading.Thread(target=self._run_clock, name="plant-clock", daemon=True)
        self._clock.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the clock and end every stream."""
        self._stop.set()
        self.broadcaster.close()
        if self._clock is not None:
            self._clock.join(timeout)

    def advance(self, n: int) -> int:
        """Advance the potline ``n`` steps, publishing each; returns the step index after them."""
        with self._step_call_lock:
            k = self.potline.step_index
            for _ in range(n):
                if self._stop.is_set():
                    break
                with self._advance_lock:
                    k = self.potline.step(1)
                    if self.broadcaster.count:
                        self.broadcaster.publish(self.potline.snapshots())
            return k

    def subscribe(self, cells: frozenset[int] | None, every: int) -> Subscriber:
        """A subscriber that starts with the present snapshot of its cells and then gets every step; end it with
        :meth:`unsubscribe`."""
        with self._advance_lock:
            initial = self.potline.snapshots(None if cells is None else sorted(cells))
            sub = self.broadcaster.subscribe(cells, every, initial)
        with self._streams_lock:
            self._streams.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """End a stream's subscriber (its drops stay counted in :attr:`dropped`)."""
        self.broadcaster.unsubscribe(sub)  # closed: its drop count is final
        with self._streams_lock:
            if sub in self._streams:
                self._streams.remove(sub)
                self._dropped_by_ended += sub.dropped

    @property
    def dropped(self) -> int:
        """Messages every stream so far has dropped because its reader fell behind."""
        with self._streams_lock:
            return self._dropped_by_ended + sum(sub.dropped for sub in self._streams)

    def _run_clock(self) -> None:
        period = self.config.dt / self.config.real_time_factor
        deadline = time.monotonic() + period
        try:
            while not self._stop.wait(max(0.0, deadline - time.monotonic())):
                self.advance(1)
                deadline += period
                now = time.monotonic()
                if now - deadline > 10 * period:  # far behind (slow machine): drop the backlog
                    deadline = now
        except Exception:
            log.exception("the plant clock stopped on an unexpected error")
            if self._on_clock_failure is not None:
                self._on_clock_failure()


_SHUTTING_DOWN = (grpc.StatusCode.UNAVAILABLE, "the plant is shutting down")


def _shutting_down() -> Abort:
    return Abort(*_SHUTTING_DOWN)


_status_of = status_mapping(
    {
        UnknownCell: grpc.StatusCode.NOT_FOUND,
        InvalidCommand: grpc.StatusCode.INVALID_ARGUMENT,
        CellFaulted: grpc.StatusCode.FAILED_PRECONDITION,
        StreamClosed: _SHUTTING_DOWN,
        TooManyStreams: (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many measurement streams are open; try again later"),
    },
    "the plant service",
    log,
)


def _check_open(servicer: PlantServicer) -> None:
    if servicer.runtime.closed:
        raise _shutting_down()


_unary = unary_errors(_status_of, before=_check_open)


def scenario_status_pb(status: ScenarioStatus) -> plant_pb2.ScenarioEventStatus:
    """The message of one scenario event of a running potline."""
    e = status.event
    msg = plant_pb2.ScenarioEventStatus(
        kind=e.kind,
        at_s=e.at_s,
        at_step=status.at_step,
        cells=list(e.cells or ()),
        parameter=e.parameter or "",
        factor=e.factor or 0.0,
        state=e.state or "",
        offset=e.offset or 0.0,
        fired=status.fired,
        description=e.describe(),
    )
    if e.value is not None:
        msg.value = e.value
    return msg


def snapshot_to_pb(snap: CellSnapshot, include_true_state: bool) -> plant_pb2.CellSnapshot:
    """The message of a :class:`plant.potline.CellSnapshot`."""
    manual = {c.field: float(v) for c, v in zip(COMMANDS, snap.manual, strict=True) if not math.isnan(v)}
    code = cast("plant_pb2.FaultCode", int(snap.fault))  # the stubs take only the enum type; a number is one
    fault = plant_pb2.FaultStatus(code=code, text=snap.fault_text)
    if snap.fault_step >= 0:
        fault.step = snap.fault_step
    return plant_pb2.CellSnapshot(
        cell=snap.cell,
        step=snap.step,
        time_s=snap.time_s,
        x=snap.y.tolist(),
        x_true=snap.x.tolist() if include_true_state else (),
        u=snap.u.tolist(),
        outputs=plant_pb2.CellOutputs(**snap.outputs),
        fault=fault,
        manual=plant_pb2.ManualInputs(**manual),
    )


class PlantServicer(plant_pb2_grpc.PlantServiceServicer):
    """Converts PlantService messages to :class:`PlantRuntime` calls and back."""

    def __init__(self, runtime: PlantRuntime) -> None:
        self.runtime = runtime

    @property
    def potline(self) -> Potline:
        return self.runtime.potline

    @_unary
    def GetInfo(self, request: plant_pb2.GetInfoRequest, context: grpc.ServicerContext) -> plant_pb2.GetInfoResponse:
        cfg = self.runtime.config
        noise = self.potline.noise
        return plant_pb2.GetInfoResponse(
            plant_spec_version=SPEC_VERSION,
            n_cells=self.potline.n_cells,
            dt_s=self.potline.dt,
            clock_mode=plant_pb2.CLOCK_MODE_STEPPED if cfg.stepped else plant_pb2.CLOCK_MODE_REAL_TIME,
            real_time_factor=cfg.real_time_factor,
            step=self.potline.step_index,
            states=[signal_to_pb(s) for s in STATES],
            inputs=[signal_to_pb(s) for s in INPUTS],
            outputs=[signal_to_pb(s) for s in OUTPUTS],
            command_bounds=[
                plant_pb2.CommandBounds(
                    field=c.field,
                    input_index=c.input_index,
                    unit=c.unit,
                    bounds=common_pb2.Range(low=c.low, high=c.high),
                )
                for c in COMMANDS
            ],
            current_profile=cfg.current_profile,
            default_acd_m=self.potline.default_acd,
            noise_std=() if noise is None else noise.std,
            max_steps_per_call=cfg.max_steps_per_call,
            stream_queue_size=cfg.stream_queue_size,
            scenario=[scenario_status_pb(s) for s in self.potline.scenario_status()],
        )

    @_unary
    def GetState(self, request: plant_pb2.GetStateRequest, context: grpc.ServicerContext) -> plant_pb2.CellSnapshot:
        return snapshot_to_pb(self.potline.snapshot(request.cell), request.include_true_state)

    @_unary
    def SetInputs(
        self, request: plant_pb2.SetInputsRequest, context: grpc.ServicerContext
    ) -> plant_pb2.SetInputsResponse:
        if not request.commands:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "SetInputsRequest.commands is empty")
        seen: set[int] = set()
        commands: list[tuple[int, str, float]] = []
        for i, cmd in enumerate(request.commands):
            if cmd.cell in seen:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"commands[{i}]: cell {cmd.cell} appears twice")
            seen.add(cmd.cell)
            for spec in COMMANDS:
                if not cmd.HasField(spec.field):
                    continue
                which = getattr(cmd, spec.field).WhichOneof("command")
                if which is None:
                    raise Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"commands[{i}].{spec.field} holds neither 'manual' nor 'automatic'",
                    )
                value = getattr(cmd, spec.field).manual if which == "manual" else math.nan
                if which == "manual" and math.isnan(value):
                    raise Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{spec.field} = nan for cell {cmd.cell} is not a finite number "
                        "(use 'automatic' to hand the input back)",
                    )
                commands.append((cmd.cell, spec.field, value))
        return plant_pb2.SetInputsResponse(step=self.potline.set_commands(commands))

    @_unary
    def Step(self, request: plant_pb2.StepRequest, context: grpc.ServicerContext) -> plant_pb2.StepResponse:
        cfg = self.runtime.config
        if not self.runtime.stepped:
            raise Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Step is only available in stepped mode; this plant runs in real time "
                f"(real_time_factor = {cfg.real_time_factor:g})",
            )
        if not 1 <= request.n <= cfg.max_steps_per_call:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"n = {request.n} must be in [1, {cfg.max_steps_per_call}]")
        return plant_pb2.StepResponse(step=self.runtime.advance(request.n))

    def _open_stream(self, request: plant_pb2.StreamMeasurementsRequest) -> Subscriber:
        if self.runtime.closed:
            raise _shutting_down()
        cells = frozenset(self.potline.check_cell(c) for c in request.cells) or None
        return self.runtime.subscribe(cells, max(1, request.every_n_steps))

    def StreamMeasurements(
        self, request: plant_pb2.StreamMeasurementsRequest, context: grpc.ServicerContext
    ) -> Iterator[plant_pb2.StreamMeasurementsResponse]:
        sub = open_or_abort(_status_of, context, lambda: self._open_stream(request))
        context.add_callback(sub.close)  # wakes the loop below when the client goes away
        try:
            while True:
                try:
                    item = sub.get(_POLL_S)
                except StreamClosed:
                    return
                if item is None:
                    if not context.is_active():
                        return
                    continue
                snap, dropped = item
                yield plant_pb2.StreamMeasurementsResponse(
                    snapshot=snapshot_to_pb(snap, request.include_true_state), dropped=dropped
                )
        finally:
            self.runtime.unsubscribe(sub)


def plant_metrics(runtime: PlantRuntime) -> RpcMetrics:
    """The metrics of one plant server, in a registry of its own: the calls it handled
    (:class:`alutwin.metrics.RpcMetrics`) and, read at scrape time, ``alutwin_plant_cells``,
    ``alutwin_plant_cells_faulted``, ``alutwin_plant_steps_total``, ``alutwin_plant_time_seconds``,
    ``alutwin_plant_streams`` (measurement streams open) and ``alutwin_plant_stream_dropped_total`` (messages the
    streams dropped because their reader fell behind)."""
    metrics = RpcMetrics()
    potline, add = runtime.potline, metrics.read_at_scrape
    add("gauge", "alutwin_plant_cells", "Cells on the line.", lambda: potline.n_cells)
    add("gauge", "alutwin_plant_cells_faulted", "Cells out of the valid domain.", lambda: (potline.faults != 0).sum())
    add("counter", "alutwin_plant_steps", "Steps the plant has taken.", lambda: potline.step_index)
    add("gauge", "alutwin_plant_time_seconds", "Plant time, s.", lambda: potline.step_index * potline.dt)
    add("gauge", "alutwin_plant_streams", "Measurement streams open.", lambda: runtime.broadcaster.count)
    add("counter", "alutwin_plant_stream_dropped", "Messages streams dropped (reader behind).", lambda: runtime.dropped)
    return metrics


class PlantServer(GrpcServer):
    """A bound PlantService server: :meth:`start`, :meth:`begin_shutdown`, :meth:`stop`.

    Made by :func:`create_server`; also a context manager (start on enter, stop on exit). :meth:`stop` reports
    NOT_SERVING, stops the clock, ends every stream cleanly (new calls get UNAVAILABLE), then stops the server
    (calls in flight get ``grace`` s, default ``config.grace_s``, from the moment the clock has stopped) and the
    metrics endpoint.
    """

    grace_includes_drain = False  # stopping the clock (up to its join timeout) does not eat the calls' grace

    def __init__(
        self,
        server: grpc.Server,
        runtime: PlantRuntime,
        health_servicer: health.HealthServicer,
        host: str,
        port: int,
        metrics: RpcMetrics | None = None,
        metrics_server: MetricsServer | None = None,
    ) -> None:
        super().__init__(server, health_servicer, host, port, runtime.config.grace_s)
        self.runtime = runtime
        self.metrics = metrics
        self.metrics_server = metrics_server

    @property
    def potline(self) -> Potline:
        return self.runtime.potline

    @property
    def metrics_port(self) -> int | None:
        """Port of the ``/metrics`` endpoint, or None without one."""
        return None if self.metrics_server is None else self.metrics_server.port

    def _started(self) -> None:
        self.runtime.start()  # the clock, in real-time mode
        if self.metrics_server is not None:
            self.metrics_server.start()

    def _drain(self, grace: float) -> None:
        self.runtime.close()

    def _close(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.stop()


def _warn_if_exposed(config: PlantConfig, token: str | None) -> None:
    if config.loopback:
        return
    if not config.tls:
        log.warning("serving on %s without TLS: anyone on the network can reach the plant", config.host)
    if token is None:
        log.warning(
            "serving on %s with the commands open (no token): anyone who reaches the plant can set its inputs "
            "and step it; set token_env in its config",
            config.host,
        )


def create_server(config: PlantConfig, *, potline: Potline | None = None) -> tuple[PlantServer, int]:
    """A PlantService server bound to ``config.host:config.port``, not yet started.

    Logs a warning when it listens beyond loopback without TLS or with the commands open (no token).

    Parameters
    ----------
    config : PlantConfig
        Plant and server settings; ``port = 0`` binds a free port.
    potline : Potline, optional
        The potline to serve; built from ``config`` when absent (pass one to use other initial states,
        parameters or limits).

    Returns
    -------
    (PlantServer, int)
        The server and the port it is bound to.

    Raises
    ------
    OSError
        The address (or the metrics address) cannot be bound, or the TLS files cannot be read.
    ValueError
        The token in ``token_env`` is too short, or ``potline`` has another ``dt`` than ``config``.
    """
    if potline is None:
        potline = Potline.from_config(config)
    elif potline.dt != config.dt:
        raise ValueError(f"the potline's dt ({potline.dt:g} s) differs from config.dt ({config.dt:g} s)")
    token = config.resolve_token()
    credentials = server_credentials(config.tls_cert, config.tls_key)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)

    def clock_failed() -> None:
        health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)

    runtime = PlantRuntime(potline, config, on_clock_failure=clock_failed)
    metrics = plant_metrics(runtime)
    interceptor = CallInterceptor(token, COMMAND_METHODS, metrics.observe)
    server = new_server(config.max_workers, "plant-grpc", interceptors=[interceptor])
    plant_pb2_grpc.add_PlantServiceServicer_to_server(PlantServicer(runtime), server)
    serve_health_and_reflection(server, [SERVICE_NAME], health_servicer)
    metrics_server = None
    if config.metrics_port is not None:  # before the gRPC port: a bound gRPC server holds its port until it ran
        metrics_server = MetricsServer(metrics.registry, config.metrics_host, config.metrics_port, name="plant-metrics")
    try:
        port = bind(server, config.host, config.port, credentials)
    except BaseException:
        if metrics_server is not None:
            metrics_server.stop()
        raise
    _warn_if_exposed(config, token)
    return PlantServer(server, runtime, health_servicer, config.host, port, metrics, metrics_server), port


def _describe(config: PlantConfig, server: PlantServer, token: bool) -> str:
    mode = "stepped mode" if config.stepped else f"real time x{config.real_time_factor:g}"
    events = f", {len(config.scenario)} scenario event(s)" if config.scenario else ""
    parts = [
        f"{config.n_cells} cells, {mode}, current {config.current_profile}, seed {config.seed}{events}",
        "TLS" if config.tls else "no TLS",
        "commands need the token" if token else "commands open (no token)",
    ]
    if server.metrics_port is not None:
        parts.append(f"metrics on http://{format_address(config.metrics_host, server.metrics_port)}/metrics")
    return ", ".join(parts)


def serve(config: PlantConfig, *, out: TextIO | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain: report NOT_SERVING, stop the clock, end the streams and stop
    with ``config.grace_s`` of grace for the calls in flight.

    Prints the bound address to ``out`` (default stdout) once serving. Signal handlers are installed only when
    called from the main thread (and restored afterwards).
    """
    out = sys.stdout if out is None else out
    server, _ = create_server(config)

    def serving() -> None:
        description = _describe(config, server, config.resolve_token() is not None)
        print(f"alutwin plant: serving {SERVICE_NAME} on {server.address} ({description})", file=out, flush=True)

    serve_until_signalled(
        server,
        on_serving=serving,
        on_signal=lambda: print("alutwin plant: shutting down", file=out, flush=True),
        poll_s=0.5,
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    flags = {
        "port": args.port,
        "host": args.host,
        "n_cells": args.cells,
        "real_time_factor": args.real_time_factor,
        "seed": args.seed,
        "metrics_port": args.metrics_port,
    }
    config = PlantConfig.from_cli(args.config, flags, n_cells=4, seed=0, port=DEFAULT_PORT)
    try:
        serve(config)
    except OSError as exc:
        raise CliError(str(exc)) from None
    return 0
