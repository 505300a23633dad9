"""Model versions: the on-disk store, the registry with aliases and hot swap, and model explanations.

Modules: ``store`` (versions and aliases on disk), ``registry`` (:class:`ModelRegistry`: loaded versions, hot swap,
rollback, events), ``served`` (a validated version and its smoke test), ``watch`` (one Watch stream's queue),
``explain`` (sparsity and dependency of a model), ``errors`` (the refusals), ``replicas`` (following the changes
other processes make to a shared store). The result types (events,
explanations, summaries) live in :mod:`twin.results`.
"""

from twin.registry.errors import (
    Conflict,
    InvalidRequest,
    ModelRejected,
    NotFound,
    NotServable,
    RegistryClosed,
    RegistryError,
    TooManyWatchers,
    WatchClosed,
)
from twin.registry.explain import JACOBIAN_POINTS, JACOBIAN_REL_THRESHOLD, WEIGHT_THRESHOLD, dependency_of, explain
from twin.registry.registry import DEFAULT_ALIAS, MAX_DESCRIPTION, ModelRegistry, model_summaries
from twin.registry.replicas import StorePoller, events_between
from twin.registry.served import NOMINAL_INPUT, NOMINAL_STATE, Engine, ServedModel, default_engine, validate_model
from twin.registry.store import (
    ALIAS_PATTERN,
    HISTORY_LIMIT,
    NAME_PATTERN,
    STATE_FORMAT,
    ModelRecord,
    ModelStore,
    StoreError,
    StoreState,
    VersionRecord,
    check_alias,
    check_name,
)
from twin.registry.watch import Watcher

__all__ = [
    "ALIAS_PATTERN",
    "Conflict",
    "DEFAULT_ALIAS",
    "Engine",
    "HISTORY_LIMIT",
    "InvalidRequest",
    "JACOBIAN_POINTS",
    "JACOBIAN_REL_THRESHOLD",
    "MAX_DESCRIPTION",
    "ModelRecord",
    "ModelRejected",
    "ModelRegistry",
    "ModelStore",
    "NAME_PATTERN",
    "NOMINAL_INPUT",
    "NOMINAL_STATE",
    "NotFound",
    "NotServable",
    "RegistryClosed",
    "RegistryError",
    "STATE_FORMAT",
    "ServedModel",
    "StoreError",
    "StorePoller",
    "StoreState",
    "TooManyWatchers",
    "VersionRecord",
    "WEIGHT_THRESHOLD",
    "WatchClosed",
    "Watcher",
    "check_alias",
    "check_name",
    "default_engine",
    "dependency_of",
    "events_between",
    "explain",
    "model_summaries",
    "validate_model",
]
