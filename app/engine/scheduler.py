"""The dynamic batcher, by job: requests and priorities (``requests``), a variant's lanes and cost model
(``queues``), admission control (``admission``) and the device worker (``worker``). This module re-exports their
public names for the code that imports them from here.

Each queue has three lanes, one per priority: interactive pairs run before batch pairs, batch pairs before shadow
pairs, so lower-priority work only fills spare device time. One worker thread per device runs every forward pass for
the variants placed on that device, so the event loop never blocks on a model and variants sharing a GPU do not
fight over it.
"""

from app.engine.admission import ADMISSION_HEADROOM, AdmissionControl, Reservation
from app.engine.queues import Lane, UnloadedRunner, VariantQueue
from app.engine.requests import InferenceRequest, PendingPair, Priority, ShadowRefused, WorkerKilled
from app.engine.worker import DeviceWorker

__all__ = [
    "ADMISSION_HEADROOM",
    "AdmissionControl",
    "DeviceWorker",
    "InferenceRequest",
    "Lane",
    "PendingPair",
    "Priority",
    "Reservation",
    "ShadowRefused",
    "UnloadedRunner",
    "VariantQueue",
    "WorkerKilled",
]
