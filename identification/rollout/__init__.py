"""Free-run rollouts of surrogate ensembles: the numpy reference engine and the compiled C kernel over the exact
non-zeros, with the ensemble summary (mean, spread, algebraic outputs) the twin serves."""

from identification.rollout.engine import (
    ENGINES,
    GENERATED,
    OUTPUT_ORDER,
    NumpyRolloutEngine,
    RolloutEngine,
    Summary,
    algebraic_outputs,
    compiled_rollout_available,
    make_rollout_engine,
    specialised_source,
    summarise,
    summary_of,
    vector_source,
)

__all__ = [
    "ENGINES",
    "GENERATED",
    "NumpyRolloutEngine",
    "OUTPUT_ORDER",
    "RolloutEngine",
    "Summary",
    "algebraic_outputs",
    "compiled_rollout_available",
    "make_rollout_engine",
    "specialised_source",
    "summarise",
    "summary_of",
    "vector_source",
]
