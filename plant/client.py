"""A small typed client of ``alutwin.v1.PlantService``: plain dataclasses and numpy arrays out, no protobuf.

Example::

    with PlantClient("127.0.0.1:50051") as plant:
        info = plant.info()
        plant.set_inputs(0, alumina_feed=0.03, acd=0.048)
        plant.step(10)
        m = plant.state(0)                     # m.x (8,), m.u (5,), m.outputs["superheat"]
        plant.set_inputs(0, alumina_feed=AUTOMATIC)

The calls that change the plant (:meth:`PlantClient.set_inputs`, :meth:`~PlantClient.set_many`,
:meth:`~PlantClient.step`) send the client's ``token`` (needed where the server has one). Errors of the service
arrive as :class:`grpc.RpcError` (``.code()``, ``.details()``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from alutwin.rpc import bearer_metadata, open_channel
from alutwin.v1 import plant_pb2, plant_pb2_grpc
from plant.config import COMMANDS
from plant.domain import Fault
from plant.potline import OUTPUT_NAMES
from plant.scenarios import ScenarioEvent, ScenarioStatus

__all__ = ["AUTOMATIC", "Measurement", "MeasurementStream", "PlantClient", "PlantInfo"]


class _Automatic:
    """Type of :data:`AUTOMATIC`."""

    def __repr__(self) -> str:
        return "AUTOMATIC"


AUTOMATIC: Final = _Automatic()
"""Pass as a command value to hand the input back to the cell's own control."""

_COMMAND_FIELDS = tuple(c.field for c in COMMANDS)


@dataclass(frozen=True)
class Measurement:
    """One cell at one step, as the service reports it.

    Attributes
    ----------
    cell, step, time_s : which cell, steps taken, plant time (s).
    x : (8,) measured state (noisy when the plant has noise).
    x_true : (8,) true state, or None unless asked for.
    u : (5,) input applied over the last step.
    outputs : superheat (degC), alumina_pct, alf3_pct (%), liquidus (degC), cell_voltage (V), power (W).
    manual : manual command per field ("alumina_feed", "alf3_feed", "acd"), None where automatic.
    fault : :class:`plant.domain.Fault` (``Fault.NONE`` while healthy); ``fault_text`` in words;
        ``fault_step`` the step whose result left the valid domain, or None.
    dropped : messages this stream has dropped so far (0 outside streams).
    """

    cell: int
    step: int
    time_s: float
    x: np.ndarray
    x_true: np.ndarray | None
    u: np.ndarray
    outputs: dict[str, float]
    manual: dict[str, float | None]
    fault: Fault
    fault_text: str
    fault_step: int | None
    dropped: int = 0

    @classmethod
    def from_pb(cls, msg: plant_pb2.CellSnapshot, dropped: int = 0) -> Measurement:
        return cls(
            cell=msg.cell,
            step=msg.step,
            time_s=msg.time_s,
            x=np.array(msg.x, dtype=np.float64),
            x_true=np.array(msg.x_true, dtype=np.float64) if len(msg.x_true) else None,
            u=np.array(msg.u, dtype=np.float64),
            outputs={f: getattr(msg.outputs, f) for f in OUTPUT_NAMES},
            manual={f: getattr(msg.manual, f) if msg.manual.HasField(f) else None for f in _COMMAND_FIELDS},
            fault=Fault(msg.fault.code),
            fault_text=msg.fault.text,
            fault_step=msg.fault.step if msg.fault.HasField("step") else None,
            dropped=dropped,
        )


@dataclass(frozen=True)
class PlantInfo:
    """What the plant is (``GetInfo``).

    ``states``, ``inputs`` and ``outputs`` are ``(name, unit)`` pairs in vector order; ``command_bounds``
    maps a command field to ``(low, high, unit)``; ``noise_std`` is None for exact measurements; ``scenario``
    lists the drift and sensor-fault events and whether each has fired.
    """

    spec_version: str
    n_cells: int
    dt: float
    stepped: bool
    real_time_factor: float
    step: int
    states: tuple[tuple[str, str], ...]
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    command_bounds: dict[str, tuple[float, float, str]]
    current_profile: str
    default_acd: float
    noise_std: tuple[float, ...] | None
    max_steps_per_call: int
    stream_queue_size: int
    scenario: tuple[ScenarioStatus, ...] = ()


class MeasurementStream:
    """An iterator of :class:`Measurement` from ``StreamMeasurements``; :meth:`cancel` (or ``with``) ends it."""

    def __init__(self, call: Iterator[plant_pb2.StreamMeasurementsResponse]) -> None:
        self._call = call

    def __iter__(self) -> Iterator[Measurement]:
        return self

    def __next__(self) -> Measurement:
        msg = next(self._call)
        return Measurement.from_pb(msg.snapshot, msg.dropped)

    def cancel(self) -> None:
        """End the stream from the client side."""
        self._call.cancel()  # type: ignore[attr-defined]

    def __enter__(self) -> MeasurementStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


def _scenario_from_pb(msg: plant_pb2.ScenarioEventStatus) -> ScenarioStatus:
    fields: dict[str, Any] = {"kind": msg.kind, "at_s": msg.at_s, "cells": tuple(msg.cells) or None}
    if msg.kind == "drift":
        fields.update(parameter=msg.parameter, factor=msg.factor)
    else:
        fields["state"] = msg.state
        if msg.kind == "offset_sensor":
            fields["offset"] = msg.offset
        elif msg.HasField("value"):
            fields["value"] = msg.value
    return ScenarioStatus(ScenarioEvent(**fields), msg.at_step, msg.fired)


def _command(value: float | _Automatic) -> plant_pb2.InputCommand:
    if value is AUTOMATIC:
        return plant_pb2.InputCommand(automatic=plant_pb2.Automatic())
    return plant_pb2.InputCommand(manual=float(value))  # type: ignore[arg-type]


class PlantClient:
    """Client of a PlantService at ``address`` (``host:port``).

    Parameters
    ----------
    address : str
        Where the service listens.
    token : str, optional
        Bearer token sent with the calls that change the plant.
    timeout : float
        Deadline of each unary call, s.
    root_certificates : bytes, optional
        PEM roots to trust: connect with TLS (the server's certificate must name the host of ``address``).
    options : sequence of (str, value)
        gRPC channel options, e.g. ``[("grpc.max_receive_message_length", 1 << 24)]``.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        root_certificates: bytes | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._auth = bearer_metadata(token)
        self._channel = open_channel(address, root_certificates=root_certificates, options=options)
        self._stub = plant_pb2_grpc.PlantServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def info(self) -> PlantInfo:
        """What the plant is."""
        r = self._stub.GetInfo(plant_pb2.GetInfoRequest(), timeout=self.timeout)
        return PlantInfo(
            spec_version=r.plant_spec_version,
            n_cells=r.n_cells,
            dt=r.dt_s,
            stepped=r.clock_mode == plant_pb2.CLOCK_MODE_STEPPED,
            real_time_factor=r.real_time_factor,
            step=r.step,
            states=tuple((s.name, s.unit) for s in r.states),
            inputs=tuple((s.name, s.unit) for s in r.inputs),
            outputs=tuple((s.name, s.unit) for s in r.outputs),
            command_bounds={b.field: (b.bounds.low, b.bounds.high, b.unit) for b in r.command_bounds},
            current_profile=r.current_profile,
            default_acd=r.default_acd_m,
            noise_std=tuple(r.noise_std) if len(r.noise_std) else None,
            max_steps_per_call=r.max_steps_per_call,
            stream_queue_size=r.stream_queue_size,
            scenario=tuple(_scenario_from_pb(e) for e in r.scenario),
        )

    def state(self, cell: int, *, include_true: bool = False) -> Measurement:
        """The latest measurement of one cell (with its true state when ``include_true``)."""
        msg = self._stub.GetState(
            plant_pb2.GetStateRequest(cell=cell, include_true_state=include_true), timeout=self.timeout
        )
        return Measurement.from_pb(msg)

    def set_inputs(
        self,
        cell: int,
        *,
        alumina_feed: float | _Automatic | None = None,
        alf3_feed: float | _Automatic | None = None,
        acd: float | _Automatic | None = None,
    ) -> int:
        """Command one cell's manipulated inputs: a number holds that value, :data:`AUTOMATIC` hands the
        input back, None leaves it as it is. Returns the step from which the commands act."""
        given = {"alumina_feed": alumina_feed, "alf3_feed": alf3_feed, "acd": acd}
        cmd = plant_pb2.CellCommand(cell=cell, **{k: _command(v) for k, v in given.items() if v is not None})
        return self.set_many([cmd])

    def set_many(self, commands: Iterable[plant_pb2.CellCommand]) -> int:
        """Send several cells' commands at once (all checked, then applied together)."""
        request = plant_pb2.SetInputsRequest(commands=list(commands))
        r = self._stub.SetInputs(request, timeout=self.timeout, metadata=self._auth)
        return r.step

    def step(self, n: int = 1) -> int:
        """Advance a stepped plant by ``n`` steps; returns the steps taken so far."""
        return self._stub.Step(plant_pb2.StepRequest(n=n), timeout=self.timeout, metadata=self._auth).step

    def measurements(
        self, cells: Iterable[int] = (), *, every: int = 1, include_true: bool = False
    ) -> MeasurementStream:
        """Stream measurements of ``cells`` (all when empty): first the present one of each cell, then every
        ``every``-th step as the plant advances."""
        req = plant_pb2.StreamMeasurementsRequest(
            cells=list(cells), every_n_steps=every, include_true_state=include_true
        )
        return MeasurementStream(self._stub.StreamMeasurements(req))

    def health(self, service: str = "") -> str:
        """The health status name ("SERVING", "NOT_SERVING", ...) of ``service`` ("" = the whole server)."""
        r = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PlantClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
