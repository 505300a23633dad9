"""Benchmark: the twin's predictions, in process and over loopback gRPC, side by side in one run.

Two workloads, each for a dense 10-member ensemble (13-20-20-20-20-8, 1620 weights per member) and an exactly
sparse one made from it by pruning (about 300 non-zero weights per member):

(a) **one cell**, ensemble of 10, horizon 360 (1 h at 10 s): latency p50 and p99 of
    - ``torch-bmm``: a straightforward batched-torch rollout (float64, one ``baddbmm`` per layer per step, one
      torch thread: with more, the tiny products only wait on each other), the reference point of the issue;
    - ``numpy``: the reference :meth:`Surrogate.simulate`;
    - ``engine``: the rollout engine the twin serves with (``identification.rollout``, "auto"): every
      member's trajectory; ``engine-f32``: the same with ``precision="float32"`` (the network layers in
      float32, the states in float64: what Predict computes for ``COMPUTE_PRECISION_FLOAT32``);
    - ``summary``: the same engine computing the ensemble mean, spread and algebraic outputs itself
      (``simulate_summary``; for one or two cells it is ``engine`` plus numpy); ``summary-f32`` in float32;
    - ``predict``: what one Predict computes, in process (:func:`twin.serving.predict`: ``summary`` plus the
      choice of outputs);
    - ``grpc``: the same Predict through :class:`twin.client.TwinClient` over loopback to ``alutwin twin serve``
      running in another process, raw float64 arrays both ways (exact);
    - ``grpc-f32``: the same with ``precision="float32"`` (arrays rounded to float32 both ways: half the bytes);
    - ``grpc-echo``: a bare gRPC server in another process answering a request of the float64 Predict's size
      with as many bytes as its response: the loopback transport's own cost, the floor under ``grpc``;
    - ``predict-lean``, ``grpc-lean``, ``grpc-lean-echo``: the request a potline client makes: mean and
      outputs only (field mask), every 6th step (stride 6: one value a minute), float32 arrays; in process,
      over gRPC, and the bare echo of its bytes.
(b) **a potline**: 300 cells x horizon 360 x ensemble 10, the same ways: time per call (median) and
    throughput (cell-steps per second, each with all 10 members); the gRPC overhead is reported relative to
    the in-process ``predict``.

(c) **float32 compute on the committed champion** (the packaged ``sparse-inputskip`` model) for the potline
    request of (b): the error of float32 against float64 in the ensemble-mean states at the last step (max
    and median relative, the largest absolute in each state's unit, and relative to how far the state moved
    over the horizon), and ``engine``/``summary`` in float64 and float32 side by side.

The gRPC figures include encoding the request, the server's validation, the pool hop, the rollout,
summaries, encoding the response, the transfer (for (b) in float64 about 4 MB up and 17 MB down) and
decoding it. The float64 results over gRPC are checked to equal the in-process ``predict`` bit for bit; the
float32 ones are reported with their largest relative difference.

Run from the repository root::

    .venv/bin/python bench/twin_predict.py                 # writes bench/results/twin_predict.json
    .venv/bin/python bench/twin_predict.py --repeats-a 50 --repeats-b 3 --out /tmp/x.json
    .venv/bin/python bench/twin_predict.py --precision-only --out /tmp/p.json   # (c) alone, in seconds

Timings on a machine shared with other work are noisy; the load average at the start and the end is recorded.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from _common import check_positive, load_average, machine, parser, scoped_torch_threads, write_results

from alutwin.codec import serialize_predict_response
from alutwin.v1 import twin_pb2
from identification.data import fit_normalization, make_samples
from identification.estimator import prune
from identification.modelfile import load_model, save_model
from identification.network import Architecture, EnsembleWeights
from identification.pretrained import default_models_dir
from identification.rollout import make_rollout_engine
from identification.surrogate import Surrogate
from plant import STATES, aprbs, sample_initial_states, simulate
from twin.client import TwinClient
from twin.registry import ServedModel, validate_model
from twin.serving import predict

__all__ = ["main", "make_models", "run_benchmark", "run_precision", "torch_rollout"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "twin_predict.json"
REPO = Path(__file__).resolve().parents[1]
M = 10
H = 360
POTLINE = 300
TARGET_NNZ = 300
LEAN_FIELDS = frozenset({"mean", "outputs"})
LEAN_STRIDE = 6
WAYS = (
    "torch-bmm",
    "numpy",
    "engine",
    "engine-f32",
    "summary",
    "summary-f32",
    "predict",
    "grpc",
    "grpc-f32",
    "grpc-echo",
)
CHAMPION = "sparse-inputskip"  # the packaged model the potline serves
LEAN_WAYS = ("predict-lean", "grpc-lean", "grpc-lean-echo")


def make_models(seed: int = 0) -> dict[str, Surrogate]:
    """A dense 10-member ensemble with a normalisation fitted on a small simulated set, and its pruned copy
    with about :data:`TARGET_NNZ` non-zero weights per member."""
    rng = np.random.default_rng(seed)
    data = simulate(sample_initial_states(rng, 8), aprbs(rng, 8, 500))
    norm = fit_normalization(make_samples(data), data.dt)
    arch = Architecture()
    ws = tuple(rng.normal(0, 0.3 / np.sqrt(a), (M, a, b)) for a, b in arch.layer_shapes)
    bs = tuple(rng.normal(0, 0.05, (M, b)) for _, b in arch.layer_shapes)
    dense = Surrogate(EnsembleWeights(arch, ws, bs), norm)
    magnitudes = np.sort(np.concatenate([np.abs(w).ravel() for w in ws]))[::-1]
    threshold = float(magnitudes[TARGET_NNZ * M])  # keep the TARGET_NNZ * M largest of the ensemble
    sparse = Surrogate(prune(dense.weights, threshold), norm)
    return {"dense": dense, "sparse": sparse}


def torch_rollout(surrogate: Surrogate, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The straightforward batched-torch rollout: float64, one ``baddbmm`` per layer per step, ``(M, B, H + 1, 8)``."""
    w = surrogate.weights
    n = surrogate.normalization
    weights = [torch.from_numpy(a) for a in w.weights]  # (M, n_in, n_out)
    biases = [torch.from_numpy(b)[:, None, :] for b in w.biases]  # (M, 1, n_out)
    fmean, fstd = torch.from_numpy(n.feature_mean), torch.from_numpy(n.feature_std)
    tmean, tstd = torch.from_numpy(n.target_mean), torch.from_numpy(n.target_std)
    ut = torch.from_numpy(np.ascontiguousarray(u))
    m, (b, h, _) = w.n_members, u.shape
    out = torch.empty((m, b, h + 1, 8), dtype=torch.float64)
    x = torch.from_numpy(np.ascontiguousarray(x0)).expand(m, b, 8).clone()
    out[:, :, 0] = x
    with torch.no_grad():
        for k in range(h):
            z = (torch.cat([x, ut[:, k].expand(m, b, 5)], dim=-1) - fmean) / fstd
            for wl, bl in zip(weights[:-1], biases[:-1], strict=True):
                z = torch.relu(torch.baddbmm(bl, z, wl))
            dx = torch.baddbmm(biases[-1], z, weights[-1]) * tstd + tmean
            x = x + surrogate.dt * dx
            out[:, :, k + 1] = x
    return out.numpy()


def _times(call: Callable[[], Any], repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        call()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def _stats(seconds: list[float], cell_steps: int) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    p50 = float(np.percentile(ms, 50))
    return {
        "p50_ms": p50,
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "calls": len(seconds),
        "cell_steps_per_s": cell_steps / (p50 / 1e3),
    }


def _ways(
    model: Surrogate, engine: Any, served: ServedModel, client: TwinClient, x0: np.ndarray, u: np.ndarray
) -> dict[str, Callable[[], Any]]:
    """The ways of computing one workload, as calls without arguments."""
    return {
        "torch-bmm": lambda: torch_rollout(model, x0, u),
        "numpy": lambda: model.simulate(x0, u),
        "engine": lambda: engine.simulate(x0, u),
        "engine-f32": lambda: engine.simulate(x0, u, precision="float32"),
        "summary": lambda: engine.simulate_summary(x0, u),
        "summary-f32": lambda: engine.simulate_summary(x0, u, precision="float32"),
        "predict": lambda: predict(served, x0, u),
        "grpc": lambda: client.predict(served.name, x0, u),
        "grpc-f32": lambda: client.predict(served.name, x0, u, precision="float32"),
        "predict-lean": lambda: predict(served, x0, u, fields=LEAN_FIELDS, stride=LEAN_STRIDE),
        "grpc-lean": lambda: client.predict(
            served.name, x0, u, fields=tuple(sorted(LEAN_FIELDS)), stride=LEAN_STRIDE, precision="float32"
        ),
    }


_ECHO_SERVER = """
import sys
from concurrent import futures
import grpc
limit = 64 << 20
replies = {}
def echo(request, context):  # answers n zero bytes, n in the request's first 8 bytes
    n = int.from_bytes(request[:8], "little")
    return replies.setdefault(n, bytes(n))
server = grpc.server(futures.ThreadPoolExecutor(4), options=[
    ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)])
handler = grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
server.add_generic_rpc_handlers((handler,))
print(server.add_insecure_port("127.0.0.1:0"), flush=True)
server.start()
server.wait_for_termination()
"""


def _response_bytes(result: Any, encoding: int = twin_pb2.ARRAY_ENCODING_RAW) -> int:
    """Size of the PredictResponse carrying ``result``'s arrays and validity (its other header fields, a few
    dozen bytes, left out)."""
    header = twin_pb2.PredictResponse(validity=[v.to_pb() for v in result.validity])
    return len(serialize_predict_response(header, result.arrays(), encoding))


class _Echo:
    """A bare gRPC server in a subprocess that answers a request with as many zero bytes as it asks for: what
    moving a Predict's request and response costs over loopback, without a model or any parsing."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _ECHO_SERVER], stdout=subprocess.PIPE, text=True)
        port = int(self.proc.stdout.readline())
        limit = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=limit)
        self.call = self.channel.unary_unary("/bench.Echo/Echo")

    def caller(self, request_bytes: int, response_bytes: int) -> Callable[[], Any]:
        request = response_bytes.to_bytes(8, "little") + bytes(max(request_bytes - 8, 0))
        return lambda: self.call(request)

    def stop(self) -> None:
        self.channel.close()
        self.proc.kill()
        self.proc.wait(timeout=30)


class _Server:
    """``alutwin twin serve`` in a subprocess on a fresh store, with a random management token."""

    def __init__(self, root: Path) -> None:
        self.token = secrets.token_hex(16)
        config = root / "twin.yaml"
        config.write_text("store: store\nport: 0\ntoken_env: BENCH_TWIN_TOKEN\nmax_work: 2000000\ngrace_s: 1\n")
        env = {**os.environ, "BENCH_TWIN_TOKEN": self.token, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-c", "from alutwin.cli import main; main()", "twin", "serve", "--config", str(config)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO
        )
        line = self.proc.stdout.readline()
        if " on " not in line:
            self.proc.kill()
            raise RuntimeError(f"the twin did not start: {line!r}")
        self.address = line.split(" on ")[1].split()[0]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def run_benchmark(repeats_a: int, repeats_b: int, seed: int) -> dict[str, Any]:
    """Time every way on both workloads and both models with one torch thread (tiny matrices: more threads only
    wait on each other, badly on a loaded machine; the process's setting is restored afterwards); returns the
    figures."""
    with scoped_torch_threads(1):
        return _run(repeats_a, repeats_b, seed)


def _potline(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Workload (b): :data:`POTLINE` initial states and inputs over :data:`H` steps, (B, 8) and (B, H, 5)."""
    rng = np.random.default_rng(seed + 1)
    x0_b = sample_initial_states(rng, POTLINE)
    u_b = np.broadcast_to(np.array([0.024, 140_000.0, 0.0, 0.0, 0.05]), (POTLINE, H, 5)).copy()
    u_b[:, :, 1] += rng.normal(0, 1000.0, (POTLINE, H))
    return x0_b, u_b


def run_precision(repeats: int, seed: int) -> dict[str, Any]:
    """(c): float32 against float64 compute on the committed champion for workload (b): the error in the
    ensemble-mean states at the last step and the engine's time in both."""
    load_start = load_average()
    model = load_model(default_models_dir() / CHAMPION).surrogate
    engine = make_rollout_engine(model)
    x0, u = _potline(seed)
    s64 = engine.simulate_summary(x0, u)
    s32 = engine.simulate_summary(x0, u, precision="float32")
    ref, got = s64.mean[:, -1], s32.mean[:, -1]  # (B, 8)
    finite = np.isfinite(ref).all(axis=1) & np.isfinite(got).all(axis=1)
    ref, got = ref[finite], got[finite]
    err = np.abs(got - ref)  # (B', 8)
    rel = err / np.abs(ref)
    moved = np.abs(ref - x0[finite])  # how far each state moved over the horizon
    per_state = {
        st.name: {
            "unit": st.unit,
            "max_abs": float(err[:, st.index].max()),
            "median_abs": float(np.median(err[:, st.index])),
            "max_rel": float(rel[:, st.index].max()),
            "max_rel_to_motion": float((err[:, st.index] / moved[:, st.index]).max()),
        }
        for st in STATES
    }
    times = {}
    calls = {
        "engine": lambda: engine.simulate(x0, u),
        "engine-f32": lambda: engine.simulate(x0, u, precision="float32"),
        "summary": lambda: engine.simulate_summary(x0, u),
        "summary-f32": lambda: engine.simulate_summary(x0, u, precision="float32"),
    }
    for way, call in calls.items():
        times[way] = _stats(_times(call, repeats), x0.shape[0] * u.shape[1])
    return {
        "model": CHAMPION,
        "engine": type(engine).__name__,
        "workload": f"{POTLINE} cells x {H} steps x {model.n_members} members, seed {seed}",
        "scenarios_compared": int(finite.sum()),
        "last_step_mean_max_rel": float(rel.max()),
        "last_step_mean_median_rel": float(np.median(rel)),
        "last_step_mean_median_rel_to_motion": float(np.median(err / moved)),
        "per_state": per_state,
        "times": times,
        "engine_f32_speedup": times["engine"]["p50_ms"] / times["engine-f32"]["p50_ms"],
        "summary_f32_speedup": times["summary"]["p50_ms"] / times["summary-f32"]["p50_ms"],
        "machine": machine(load_start, numpy=np.__version__),
    }


def _print_precision(p: dict[str, Any]) -> None:
    print(f"\n(c) float32 vs float64 compute, champion {p['model']} ({p['engine']}), {p['workload']}")
    print(
        f"mean states at the last step ({p['scenarios_compared']} scenarios): relative error max "
        f"{p['last_step_mean_max_rel']:.2e}, median {p['last_step_mean_median_rel']:.2e}; median relative to "
        f"the states' motion over the horizon {p['last_step_mean_median_rel_to_motion']:.2e}"
    )
    print(f"{'state':12} {'unit':6} {'max abs':>10} {'median abs':>11} {'max rel':>9} {'max rel/motion':>15}")
    for name, q in p["per_state"].items():
        print(
            f"{name:12} {q['unit']:6} {q['max_abs']:10.2e} {q['median_abs']:11.2e} {q['max_rel']:9.1e} "
            f"{q['max_rel_to_motion']:15.1e}"
        )
    for way, t in p["times"].items():
        print(f"{way:12} p50 {t['p50_ms']:8.2f} ms  p99 {t['p99_ms']:8.2f} ms")
    print(
        f"float32 speed-up: engine {p['engine_f32_speedup']:.2f}x, summary {p['summary_f32_speedup']:.2f}x "
        f"({p['machine']['cpu']}, {p['machine']['cpus_available']} CPUs)"
    )


def _run(repeats_a: int, repeats_b: int, seed: int) -> dict[str, Any]:
    load_start = load_average()
    models = make_models(seed)
    x0_b, u_b = _potline(seed)
    workloads = {"a": (x0_b[:1], u_b[:1], repeats_a), "b": (x0_b, u_b, repeats_b)}
    results: dict[str, Any] = {"workloads": {}, "models": {}}
    with tempfile.TemporaryDirectory(prefix="twin-bench-") as tmp:
        root = Path(tmp)
        server = _Server(root)
        echo = _Echo()
        try:
            with TwinClient(server.address, token=server.token, timeout=120) as client:
                for name, model in models.items():
                    d = save_model(root / name, model, kind="sparse" if name == "sparse" else "dense", provenance={})
                    client.register(name, d, set_alias="champion")
                    loaded = load_model(d)
                    engine = validate_model(loaded, 60, make_rollout_engine)
                    served = ServedModel(name, 1, loaded, engine, b"", b"")
                    results["models"][name] = {
                        "nonzero_weights_per_member": float(model.weights.nonzero().sum() / M),
                        "engine": type(engine).__name__,
                    }
                    for wl, (x0, u, repeats) in workloads.items():
                        cell_steps = x0.shape[0] * u.shape[1]
                        row = {}
                        for way, call in _ways(model, engine, served, client, x0, u).items():
                            reps = repeats if way not in ("torch-bmm", "numpy") else max(3, repeats // 10)
                            row[way] = _stats(_times(call, reps), cell_steps)
                        local, remote = predict(served, x0, u), client.predict(name, x0, u)
                        row["grpc_equals_in_process"] = bool(
                            np.array_equal(local.mean, remote.mean) and np.array_equal(local.spread, remote.spread)
                        )
                        compact = client.predict(name, x0, u, precision="float32")
                        with np.errstate(all="ignore"):
                            rel = np.abs(compact.mean - local.mean) / np.abs(local.mean)
                        row["grpc_f32_max_relative_difference"] = float(np.nanmax(rel))
                        request = client.predict_request(name, x0, u).ByteSize()
                        response = _response_bytes(predict(served, x0, u))
                        row["grpc-echo"] = _stats(_times(echo.caller(request, response), repeats), cell_steps)
                        row["message_bytes"] = {"request": request, "response": response}
                        lean_fields = tuple(sorted(LEAN_FIELDS))
                        lean_request = client.predict_request(
                            name, x0, u, precision="float32", fields=lean_fields, stride=LEAN_STRIDE
                        ).ByteSize()
                        lean = predict(served, x0, u, fields=LEAN_FIELDS, stride=LEAN_STRIDE)
                        lean_response = _response_bytes(lean, twin_pb2.ARRAY_ENCODING_RAW_F32)
                        row["grpc-lean-echo"] = _stats(
                            _times(echo.caller(lean_request, lean_response), repeats), cell_steps
                        )
                        row["message_bytes_lean"] = {"request": lean_request, "response": lean_response}
                        remote_lean = client.predict(
                            name, x0, u, fields=lean_fields, stride=LEAN_STRIDE, precision="float32"
                        )
                        row["grpc_lean_equals_full_sliced"] = bool(
                            np.array_equal(remote_lean.require_mean(), compact.require_mean()[:, ::LEAN_STRIDE])
                        )
                        row["grpc_lean_overhead_vs_predict_lean"] = (
                            row["grpc-lean"]["p50_ms"] / row["predict-lean"]["p50_ms"] - 1.0
                        )
                        row["grpc_full_minus_predict_minus_echo_ms"] = (
                            row["grpc"]["p50_ms"] - row["predict"]["p50_ms"] - row["grpc-echo"]["p50_ms"]
                        )
                        row["predict_vs_engine"] = row["predict"]["p50_ms"] / row["engine"]["p50_ms"]
                        row["grpc_echo_vs_predict"] = row["grpc-echo"]["p50_ms"] / row["predict"]["p50_ms"]
                        row["grpc_overhead_vs_predict"] = row["grpc"]["p50_ms"] / row["predict"]["p50_ms"] - 1.0
                        row["grpc_f32_overhead_vs_predict"] = row["grpc-f32"]["p50_ms"] / row["predict"]["p50_ms"] - 1.0
                        row["grpc_overhead_vs_engine"] = row["grpc"]["p50_ms"] / row["engine"]["p50_ms"] - 1.0
                        results["workloads"].setdefault(wl, {})[name] = row
        finally:
            echo.stop()
            server.stop()
    results["goals"] = _goals(results["workloads"])
    results["precision"] = run_precision(repeats_b, seed)
    results["setup"] = {
        "members": M,
        "horizon": H,
        "potline_cells": POTLINE,
        "seed": seed,
        "repeats_a": repeats_a,
        "repeats_b": repeats_b,
        "server": "alutwin twin serve in a subprocess, loopback, raw float64 arrays",
    }
    results["machine"] = machine(
        load_start,
        numpy=np.__version__,
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        grpc=grpc.__version__,
    )
    return results


def _goals(workloads: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's goals on the sparse model (the one the potline serves)."""
    a, b = workloads["a"]["sparse"], workloads["b"]["sparse"]
    figures = {
        "b_lean_grpc_overhead_le_10pct": (b["grpc_lean_overhead_vs_predict_lean"], 0.10),
        "b_full_grpc_minus_predict_minus_echo_le_5ms": (b["grpc_full_minus_predict_minus_echo_ms"], 5.0),
        "b_engine_le_20ms": (b["engine"]["p50_ms"], 20.0),
        "b_predict_le_1.2x_engine": (b["predict_vs_engine"], 1.2),
        "a_predict_le_1ms": (a["predict"]["p50_ms"], 1.0),
        "a_grpc_le_2.5ms": (a["grpc"]["p50_ms"], 2.5),
    }
    return {k: {"value": float(v), "limit": lim, "met": bool(v <= lim)} for k, (v, lim) in figures.items()}


def _print(result: dict[str, Any]) -> None:
    titles = {"a": f"(a) 1 cell x H {H} x M {M}", "b": f"(b) {POTLINE} cells x H {H} x M {M}"}
    for wl, per_model in result["workloads"].items():
        print(f"\n{titles[wl]}")
        print(f"{'model':8} {'way':10} {'p50 ms':>9} {'p99 ms':>9} {'Mcell-steps/s':>14}")
        for name, row in per_model.items():
            for way in (*WAYS, *LEAN_WAYS):
                s = row[way]
                print(f"{name:8} {way:10} {s['p50_ms']:9.2f} {s['p99_ms']:9.2f} {s['cell_steps_per_s'] / 1e6:14.3f}")
            print(
                f"{name:8} grpc vs predict: {100 * row['grpc_overhead_vs_predict']:+.1f} % (float64, equal: "
                f"{row['grpc_equals_in_process']}), {100 * row['grpc_f32_overhead_vs_predict']:+.1f} % (float32, "
                f"max relative difference {row['grpc_f32_max_relative_difference']:.1e}); a bare echo of the "
                f"same bytes ({row['message_bytes']['request'] / 1e6:.1f} MB up, "
                f"{row['message_bytes']['response'] / 1e6:.1f} MB down) takes {100 * row['grpc_echo_vs_predict']:.1f} % "
                "of the in-process predict"
            )
            print(
                f"{name:8} lean request (mean + outputs, stride {LEAN_STRIDE}, float32): gRPC adds "
                f"{100 * row['grpc_lean_overhead_vs_predict_lean']:+.1f} % to the in-process predict "
                f"({row['message_bytes_lean']['response'] / 1e6:.2f} MB down); full float64: gRPC - predict - "
                f"echo = {row['grpc_full_minus_predict_minus_echo_ms']:+.1f} ms; predict / engine = "
                f"{row['predict_vs_engine']:.2f}"
            )
    for goal, g in result["goals"].items():
        print(f"goal {goal}: {g['value']:.3f} -> {'met' if g['met'] else 'MISSED'}")
    _print_precision(result["precision"])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON results."""
    p = parser(__doc__, DEFAULT_OUT)
    p.add_argument("--repeats-a", type=int, default=300, help="timed calls of workload (a) (default 300)")
    p.add_argument("--repeats-b", type=int, default=20, help="timed calls of workload (b) (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision-only", action="store_true", help="run (c) alone (float32 vs float64 compute)")
    args = p.parse_args(argv)
    check_positive(p, args, "repeats_a", "repeats_b")
    if args.precision_only:
        precision = run_precision(args.repeats_b, args.seed)
        result = {"precision": precision, "machine": precision["machine"]}
        _print_precision(precision)
        write_results(result, args.out)
        return 0
    result = run_benchmark(args.repeats_a, args.repeats_b, args.seed)
    _print(result)
    write_results(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
