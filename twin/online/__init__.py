"""Online identification: the re-fit worker that reads the historian and registers challengers.

Modules: ``worker`` (the cycle loop and ``alutwin identify --online``), ``config`` (its settings), ``records``
(the decisions log and the worker's state file) and ``publish`` (what a challenger carries into the registry).
"""

from twin.online.config import WorkerConfig
from twin.online.records import CycleRecord
from twin.online.worker import OnlineWorker, WorkerStopped

__all__ = ["CycleRecord", "OnlineWorker", "WorkerConfig", "WorkerStopped"]
