"""Which models the service loads, on which devices, and the batch scheduler of each.

By default the newest registered student (CTranslate2) is served together with its teacher, so
every deployment can show the student's speed-up live; ``K2D_MODELS`` overrides the choice. The
app reads the store's registry and model folders only — it never imports torch or transformers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from app.batching import BatchScheduler
from app.guarded import Cascade, Harvest
from app.metrics import Metrics
from app.settings import Settings
from k2d.context import ContextPolicy
from k2d.engine import DecodeOptions, WhisperEngine, cuda_available
from k2d.guard import GuardOptions
from k2d.registry import ModelEntry, Registry, UnknownModelError, teacher_of


@dataclass
class ServedModel:
    entry: ModelEntry
    scheduler: BatchScheduler
    default_language: str | None
    cascade: Cascade | None = None  # a student served beside its teacher

    @property
    def max_window_s(self) -> float:
        """The longest window this model is served (its context policy): uploads are cut to it."""
        return self.scheduler.engine.policy.max_window_s

    def submit(self, audios: list[np.ndarray], language: str | None, options: DecodeOptions,
               fallback: bool | None = None) -> list[asyncio.Future]:
        """Queue one request's windows; each future resolves to ``(WindowResult, queue_s, inference_s)``
        once the window's final transcript is known (guard and teacher fallback included).
        ``fallback`` overrides the deployment's choice for this request."""
        if self.cascade is not None:
            return self.cascade.submit(audios, language, options, fallback)
        return self.scheduler.submit(audios, language, options)


def choose_models(registry: Registry, settings: Settings) -> list[str]:
    if settings.models:
        return settings.models
    students = [e for e in registry.by_role("student") if e.resolve(registry.store).is_dir()]
    if not students:
        teachers = [e for e in registry.by_role("teacher") if e.resolve(registry.store).is_dir()]
        if not teachers:
            raise UnknownModelError("no CTranslate2 model in the store; run `make models` (k2d models fetch)")
        return [teachers[0].name]
    student = max(students, key=lambda e: e.resolve(registry.store).stat().st_mtime)
    teacher = teacher_of(registry, student)
    return [student.name] + ([teacher] if teacher else [])


class ModelManager:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.registry = Registry(settings.models_dir)
        self.models: dict[str, ServedModel] = {}

    def device(self) -> tuple[str, str]:
        use_cuda = self.settings.device == "cuda" or (self.settings.device == "auto" and cuda_available())
        if use_cuda:
            return "cuda", self.settings.compute_type_cuda
        return "cpu", self.settings.compute_type_cpu

    def load(self) -> None:
        device, compute_type = self.device()
        for name in choose_models(self.registry, self.settings):
            entry = self.registry.get(name)
            if entry.format != "ctranslate2":
                raise ValueError(f"{name} is a {entry.format} model; serve its CTranslate2 export")
            engine = WhisperEngine(
                entry.resolve(self.registry.store), device, self.settings.device_index if device == "cuda" else [0],
                compute_type, self.settings.replicas, self.settings.cpu_threads, self._guard(entry),
                self._policy(entry), entry.repetition_penalty.overridden(self.settings.repetition_penalty),
                self.settings.cpu_decode_threads,
            )
            scheduler = BatchScheduler(name, engine, self.metrics, self.settings.max_batch_size,
                                       self.settings.max_wait_ms, self.settings.max_queue_windows,
                                       self.settings.max_batch_s)
            language = entry.extra.get("default_language") or (None if entry.multilingual else "en")
            self.models[name] = ServedModel(entry, scheduler, language)
        self.metrics.pairs = [
            (name, teacher) for name, served in self.models.items()
            if served.entry.role == "student" and (teacher := teacher_of(self.registry, served.entry)) in self.models
        ]
        self.metrics.declare(list(self.models), self.metrics.pairs)
        harvest = Harvest(self.settings.harvest_dir, self.settings.harvest_max_mb) if self.settings.harvest_dir else None
        for student, teacher in self.metrics.pairs:
            self.models[student].cascade = Cascade(
                student, teacher, self.models[student].scheduler, self.models[teacher].scheduler, self.metrics,
                self.settings.fallback, self.settings.shadow_fraction, harvest, self.settings.fallback_sampling)

    def _guard(self, entry: ModelEntry) -> GuardOptions:
        """Students beside their teacher cascade instead of sampling at higher temperatures."""
        cascades = self.settings.fallback and entry.role == "student" and teacher_of(self.registry, entry) is not None
        return GuardOptions.for_model(cascades, tuple(self.settings.guard_fallback_on), enabled=self.settings.guard,
                                      tokens_per_s=self.settings.guard_tokens_per_s,
                                      compression_ratio=self.settings.guard_compression_ratio,
                                      logprob=self.settings.guard_logprob)

    def _policy(self, entry: ModelEntry) -> ContextPolicy | None:
        """Each model's own context (a short-context student's is in its folder); the teacher gets
        Whisper's 30 s unless the operator opts in."""
        if entry.role != "student" and self.settings.teacher_context:
            return ContextPolicy.parse(self.settings.teacher_context)
        return None

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
