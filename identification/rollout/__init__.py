"""Free-run rollouts of surrogate ensembles: the numpy reference engine and the compiled C kernel over the exact
non-zeros, with the ensemble summary (mean, spread, algebraic outputs) the twin serves.

Modules: ``engine`` (the engines and how work is laid out), ``layout`` (the model as the kernel reads it),
``library`` (building, loading and checking the kernel), ``translate`` (its C source: ``prelude.c`` and
``kernel.c`` beside it, with CasADi graphs translated to C in between), ``summary`` (summaries in numpy),
``reference`` (the numpy reference of float32 compute)."""

from identification.rollout.engine import ENGINES, PRECISIONS, NumpyRolloutEngine, RolloutEngine, make_rollout_engine
from identification.rollout.library import compiled_rollout_available
from identification.rollout.reference import Float32Reference
from identification.rollout.summary import Box, Exits, Summary, algebraic_outputs, exits_of, summarise, summary_of
from identification.rollout.translate import OUTPUT_ORDER, vector_source

__all__ = [
    "ENGINES",
    "Box",
    "Exits",
    "PRECISIONS",
    "Float32Reference",
    "NumpyRolloutEngine",
    "OUTPUT_ORDER",
    "RolloutEngine",
    "Summary",
    "algebraic_outputs",
    "compiled_rollout_available",
    "exits_of",
    "make_rollout_engine",
    "summarise",
    "summary_of",
    "vector_source",
]
