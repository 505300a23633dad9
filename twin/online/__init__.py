"""Online identification: the re-fit worker that reads the historian and registers challengers."""

from twin.online.worker import CycleRecord, OnlineWorker, WorkerConfig, WorkerStopped, register_cli

__all__ = ["CycleRecord", "OnlineWorker", "WorkerConfig", "WorkerStopped", "register_cli"]
