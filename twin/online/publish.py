"""What a challenger carries into the registry: its two model files, with the worker's decision in the manifest's
``provenance`` and ``metrics`` (visible with ``ExplainModel``), and a description naming the verdict and a unique
id (which makes a retried registration idempotent)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from identification.modelfile import LoadedModel, model_to_bytes
from identification.online import Decision, Evaluation, RefitResult, Segment, step_ranges
from twin.online.config import WorkerConfig
from twin.results import MAX_DESCRIPTION

__all__ = ["Challenger", "challenger_description", "challenger_files"]


@dataclass(frozen=True)
class Challenger:
    """A re-fitted challenger with everything it was judged on (what its files record).

    Attributes
    ----------
    marker : the challenger's unique id (it goes into the version's description).
    cycle, newest : the worker's cycle number and the newest plant step of its data.
    version, champion : the champion it was judged against.
    result, decision : the re-fit and the gate's verdict.
    ev0, ev1 : the champion's and the challenger's evaluation on the held-out segments ``held``.
    faults : the sensor faults found this cycle (as dicts).
    """

    marker: str
    cycle: int
    newest: int
    version: int
    champion: LoadedModel
    result: RefitResult
    decision: Decision
    ev0: Evaluation
    ev1: Evaluation
    held: list[Segment]
    faults: list[dict[str, Any]]


def challenger_files(config: WorkerConfig, challenger: Challenger) -> tuple[bytes, bytes]:
    """The challenger's ``(manifest, weights)`` bytes, as RegisterModel takes them; ``config`` gives the model
    name, the historian and the gate that its provenance records."""
    c = challenger
    champion, result, decision, held = c.champion, c.result, c.decision, c.held
    origin = champion.provenance.get("origin", champion.provenance)
    held_range = {str(cell): steps for cell, steps in step_ranges(held).items()}
    provenance = {
        "online": {
            "challenger_id": c.marker,
            "cycle": c.cycle,
            "parent": {"name": config.model, "version": c.version, "sha256": champion.manifest["weights"]["sha256"]},
            "historian": os.fspath(config.historian),
            "plant_step": int(c.newest),
            "training": result.as_dict(),
            "held_out_steps": held_range,
            "sensor_faults": c.faults,
            "gate": config.gate.as_dict(),
            "decision": decision.as_dict(),
        },
        "origin": origin,
    }
    metrics = {
        "online_decision": "promoted" if decision.promote else "rejected",
        "online_reason": decision.reason,
        "online_1h_an_rfmse": c.ev1.error,
        "champion_1h_an_rfmse": c.ev0.error,
        "online_ratio": decision.ratio,
        "online_rollouts": c.ev1.n_rollouts,
        "online_diverged": c.ev1.n_diverged,
        "champion_diverged": c.ev0.n_diverged,
    }
    return model_to_bytes(result.surrogate, kind=result.kind, provenance=provenance, metrics=metrics)


def challenger_description(challenger: Challenger) -> str:
    """The version description: the id, cycle, parent and verdict ("PROMOTED" or "REJECTED") with its reason."""
    c, d = challenger, challenger.decision
    label = "PROMOTED" if d.promote else "REJECTED"
    return f"online challenger {c.marker} (cycle {c.cycle}, parent v{c.version}): {label}: {d.reason}"[:MAX_DESCRIPTION]
