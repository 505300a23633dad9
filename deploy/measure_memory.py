"""Resident memory of the pieces a potline deployment multiplies (deploy/SCALING.md quotes its output).

Each measurement runs in a fresh Python process and reads that process's own ``VmRSS`` and ``VmHWM`` (peak) from
``/proc/self/status`` (Linux):

- ``twin N``: a twin server (``twin.serving.create_server``, loopback, temporary store) serving N models (the
  shipped sparse surrogate registered as ``cell-000``... with alias champion), after one Predict of each
  (1 cell x 360 steps), client in the same process;
- ``nmpc K``: K cells' NMPCs in one process (``controller.mpc.NMPC`` on the shipped sparse surrogate, default
  settings: JIT-compiled NLP, 2 h horizon), each after 3 solves from its own initial state.

Usage: ``.venv/bin/python deploy/measure_memory.py [--models 0 100 300] [--nmpcs 1 4]``; prints one JSON object.
The imports of the measured code are inside the child functions: the parent process only starts children.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def _rss_mib() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return {"rss_mib": round(fields["VmRSS"], 1), "peak_mib": round(fields["VmHWM"], 1)}


def _twin(n: int) -> dict[str, float]:
    import numpy as np

    from identification.pretrained import default_models_dir
    from twin.client import TwinClient
    from twin.config import TwinConfig
    from twin.serving import create_server

    token = "m" * 32
    model = default_models_dir() / "sparse-inputskip"
    with tempfile.TemporaryDirectory() as store:
        server, _ = create_server(TwinConfig(store=Path(store), port=0, token=token, grace_s=0.0))
        server.start()
        client = TwinClient(server.address, token=token, timeout=120)
        try:
            x0 = np.array([[3.0, 10.5, 965.0, 12.0, 0.2, 0.05, 1500.0, 0.0]])
            u = np.zeros((1, 360, 5))
            u[..., 0], u[..., 4] = 140_000.0, 0.05
            for i in range(n):
                client.register(f"cell-{i:03d}", model, set_alias="champion")
            for i in range(n):
                client.predict(f"cell-{i:03d}", x0, u)
            return _rss_mib()
        finally:
            client.close()
            server.stop(0)


def _nmpc(k: int) -> dict[str, float]:
    import numpy as np

    from controller.closed_loop import operating_initial_state
    from controller.models import SurrogateModel
    from controller.mpc import NMPC
    from identification.pretrained import default_models_dir

    mpcs = [NMPC(SurrogateModel.from_dir(default_models_dir() / "sparse-inputskip")) for _ in range(k)]
    for i, mpc in enumerate(mpcs):
        x0 = operating_initial_state(i)
        v = np.asarray(mpc.v_ref, dtype=float)
        for _ in range(3):
            v = mpc.solve(x0, 140_000.0, v).v[0]
    return _rss_mib()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, nargs="+", default=[0, 100, 300], help="twin model counts")
    p.add_argument("--nmpcs", type=int, nargs="+", default=[1, 4], help="NMPCs per process")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        n = int(args.child[1])
        result = _twin(n) if args.child[0] == "twin" else _nmpc(n)
        print(json.dumps(result))
        return 0
    out: dict[str, object] = {}
    for what in [("twin", str(n)) for n in args.models] + [("nmpc", str(k)) for k in args.nmpcs]:
        done = subprocess.run(
            [sys.executable, __file__, "--child", *what], capture_output=True, text=True, check=True, timeout=1800
        )
        out[" ".join(what)] = json.loads(done.stdout.strip().splitlines()[-1])
        print(" ".join(what), out[" ".join(what)], file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
