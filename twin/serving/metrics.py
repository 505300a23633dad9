"""Prometheus metrics of the twin, in the text exposition format (version 0.0.4), written by hand.

Three kinds of metric families, each with fixed label names: :class:`Counter`, :class:`Histogram` (cumulative
``le`` buckets, ``_sum``, ``_count``) and :class:`Gauge`, whose samples a callback reads at scrape time (so the
active model versions are never out of date). :class:`MetricsRegistry` renders them all; :class:`MetricsServer`
serves the text on ``/metrics`` over HTTP (loopback by default). Everything here is thread-safe.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "Counter",
    "Gauge",
    "Histogram",
    "MetricsRegistry",
    "MetricsServer",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
)
"""Upper bounds (s) of the latency histograms' buckets; ``+Inf`` is added."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() or abs(v) >= 1e15 else str(int(v))


class _Family:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str]) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: Sequence[str]) -> tuple[str, ...]:
        key = tuple(str(v) for v in labels)
        if len(key) != len(self.label_names):
            raise ValueError(f"metric {self.name} takes labels {self.label_names}, got {key}")
        return key

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Family):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0) to the count of ``labels``."""
        if amount < 0:
            raise ValueError(f"a counter only goes up; got amount {amount}")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Histogram(_Family):
    """Observations counted into cumulative buckets per label set, with their sum and count."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help_text, labels)
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(b >= c for b, c in itertools.pairwise(bounds)):
            raise ValueError(f"histogram buckets must be increasing, got {bounds}")
        self.bounds = bounds
        self._data: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}  # counts per bucket (+Inf), [sum]

    def observe(self, value: float, *labels: str) -> None:
        """Count one observation of ``value`` for ``labels``."""
        key = self._key(labels)
        i = bisect.bisect_left(self.bounds, value)
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * (len(self.bounds) + 1), [0.0]))
            counts[i] += 1
            total[0] += value

    def count(self, *labels: str) -> int:
        with self._lock:
            entry = self._data.get(self._key(labels))
            return sum(entry[0]) if entry else 0

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s[0])) for k, (c, s) in self._data.items())
        lines = []
        for key, (counts, total) in items:
            running = 0
            for bound, n in zip((*self.bounds, math.inf), counts, strict=True):
                running += n
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


class Gauge(_Family):
    """A value per label set, read from a callback at scrape time.

    ``read`` returns ``(label values, value)`` pairs.
    """

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str],
        read: Callable[[], Iterable[tuple[Sequence[str], float]]],
    ) -> None:
        super().__init__(name, help_text, labels)
        self._read = read

    def samples(self) -> list[str]:
        return [f"{self.name}{_labels(self.label_names, self._key(k))} {_number(float(v))}" for k, v in self._read()]


class MetricsRegistry:
    """The metric families of one server, rendered together."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()

    def add(self, family: Any) -> Any:
        """Register a family (its name must be new); returns it."""
        with self._lock:
            if family.name in self._families:
                raise ValueError(f"a metric named {family.name} is already registered")
            self._families[family.name] = family
        return family

    def render(self) -> str:
        """All families in the text exposition format."""
        with self._lock:
            families = list(self._families.values())
        lines: list[str] = []
        for family in families:
            lines += family.header()
            lines += family.samples()
        return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    registry: MetricsRegistry  # set on the subclass made per server

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "only /metrics is served here")
            return
        body = self.registry.render().encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line each
        return


class MetricsServer:
    """``/metrics`` over HTTP on ``host:port`` (port 0 picks a free one), served by a daemon thread.

    Parameters
    ----------
    registry : MetricsRegistry
        What to serve.
    host, port : str, int
        Where to listen.

    Raises
    ------
    OSError
        The address cannot be bound.
    """

    def __init__(self, registry: MetricsRegistry, host: str, port: int) -> None:
        handler = type("MetricsHandler", (_Handler,), {"registry": registry})
        self._http = ThreadingHTTPServer((host.strip("[]"), port), handler)
        self._http.daemon_threads = True
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, name="twin-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._http.shutdown()
        self._http.server_close()
