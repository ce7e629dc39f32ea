"""Which models the service loads, on which devices, and the batch scheduler of each.

By default the newest registered student (CTranslate2) is served together with its teacher, so
every deployment can show the student's speed-up live; ``K2D_MODELS`` overrides the choice. The
app reads the store's registry and model folders only — it never imports torch or transformers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from app.batching import BatchScheduler
from app.costs import BusyClock
from app.guarded import Cascade, Harvest
from app.metrics import Metrics
from app.settings import Settings
from k2d.engine import DecodeOptions
from k2d.registry import ModelEntry, Registry, UnknownModelError, teacher_of
from k2d.served import Served, serve_models
from k2d.transcribe import ServingCore

if TYPE_CHECKING:
    from app.admission import Ticket


@dataclass
class ServedModel:
    """A model behind its batch queue (``served``: the assembly ``k2d evaluate`` and ``k2d.load`` use too)."""

    served: Served
    scheduler: BatchScheduler
    cascade: Cascade | None = None  # a student served beside its teacher
    # windows, language, teacher fallback rule, assembly: what k2d.load and evaluation run too
    core: ServingCore = field(init=False)

    def __post_init__(self) -> None:
        self.core = ServingCore(self.served)

    @property
    def entry(self) -> ModelEntry:
        return self.served.entry

    @property
    def max_window_s(self) -> float:
        """The longest window this model is served (its context policy): the admission estimate plans windows this long."""
        return self.scheduler.engine.policy.max_window_s

    def submit(self, audios: list[np.ndarray], language: str | None, options: DecodeOptions,
               fallback: bool | None = None, ticket: Ticket | None = None) -> list[asyncio.Future]:
        """Queue one request's windows; each future resolves to ``(WindowResult, queue_s, inference_s)``
        once the window's final transcript is known (guard and teacher fallback included).
        ``fallback`` overrides the deployment's choice for this request; ``ticket``: its admission (deadline,
        charged work), which its teacher-fallback windows carry too."""
        if self.cascade is not None:
            return self.cascade.submit(audios, language, options, fallback, ticket)
        return self.scheduler.submit(audios, language, options, ticket=ticket)


def choose_models(registry: Registry, settings: Settings) -> list[str]:
    if settings.models:
        return settings.models
    present = lambda e: e.resolve(registry.store).is_dir()  # noqa: E731
    students = [e for e in registry.by_role("student") if present(e)]
    fast = [e for e in registry.by_role("student", "onnx") if present(e)]  # CTC / transducer students
    if not students and not fast:
        teachers = [e for e in registry.by_role("teacher") if present(e)]
        if not teachers:
            raise UnknownModelError("no CTranslate2 model in the store; run `make models` (k2d models fetch)")
        return [teachers[0].name]
    student = max(students or fast, key=lambda e: e.resolve(registry.store).stat().st_mtime)
    teacher = teacher_of(registry, student)
    # the non-autoregressive students of the same teacher are served beside the K²D one
    siblings = [e.name for e in fast if e.name != student.name and e.serving.teacher == student.serving.teacher]
    return [student.name, *siblings] + ([teacher] if teacher else [])


class ModelManager:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.registry = Registry(settings.models_dir)
        self.models: dict[str, ServedModel] = {}
        self.clock = BusyClock()  # the models share the machine: one clock charges all their engine calls

    def load(self) -> None:
        settings = self.settings
        served = serve_models(self.registry, choose_models(self.registry, settings), settings.policy_for,
                              settings.runtime())
        for name, model in served.items():
            scheduler = BatchScheduler(name, model.engine, self.metrics, settings.max_batch_size, settings.max_wait_ms,
                                       settings.max_queue_windows, settings.max_batch_s, self.clock)
            self.models[name] = ServedModel(model, scheduler)
        self.metrics.pairs = [(name, teacher) for name, model in served.items() if model.entry.role == "student"
                              and (teacher := teacher_of(self.registry, model.entry)) in self.models]
        self.metrics.declare(list(self.models), self.metrics.pairs)
        harvest = Harvest(settings.harvest_dir, settings.harvest_max_mb) if settings.harvest_dir else None
        for student, teacher in self.metrics.pairs:
            self.models[student].cascade = Cascade(
                student, teacher, self.models[student].scheduler, self.models[teacher].scheduler, self.metrics,
                settings.teacher_fallback and served[student].teacher is not None, settings.shadow_fraction, harvest,
                self.models[student].core.rule)

    def start(self) -> None:
        for served in self.models.values():
            served.scheduler.start()

    @property
    def default(self) -> str:
        if self.settings.default_model:
            return self.settings.default_model
        students = [n for n, s in self.models.items() if s.entry.role == "student"]
        return students[0] if students else next(iter(self.models))

    def get(self, name: str | None) -> tuple[str, ServedModel]:
        name = name or self.default
        if name not in self.models:
            raise UnknownModelError(f"unknown model {name!r}; served models: {', '.join(self.models)}")
        return name, self.models[name]

    def ready(self) -> bool:
        return bool(self.models) and all(s.scheduler.alive and s.scheduler.accepting for s in self.models.values())

    async def drain(self, timeout: float) -> None:
        for served in self.models.values():
            await served.scheduler.drain(timeout)
