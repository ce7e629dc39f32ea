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
from app.metrics import Metrics
from app.settings import Settings
from k2d.engine import DecodeOptions, WhisperEngine
from k2d.registry import ModelEntry, Registry, UnknownModelError


@dataclass
class ServedModel:
    entry: ModelEntry
    scheduler: BatchScheduler
    default_language: str | None

    def submit(self, audios: list[np.ndarray], language: str | None, options: DecodeOptions) -> list[asyncio.Future]:
        """Queue one request's windows; each future resolves to ``(WindowResult, queue_s, inference_s)``
        once the window's final transcript is known (guard and teacher fallback included)."""
        return self.scheduler.submit(audios, language, options)


def cuda_available() -> bool:
    import ctranslate2

    return ctranslate2.get_cuda_device_count() > 0


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
    teacher = _teacher_of(registry, student)
    return [student.name] + ([teacher] if teacher else [])


def _teacher_of(registry: Registry, student: ModelEntry) -> str | None:
    family = (student.extra.get("card") or {}).get("teacher") or student.extra.get("teacher")
    if not family:
        return None
    quant = student.quantization or "int8"
    for name in (f"{family}-{quant.replace('_', '-')}", family):  # like with like: same quantisation first
        if name in registry and registry.path_of(name).is_dir():
            return name
    return None


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
                compute_type, self.settings.replicas, self.settings.cpu_threads,
            )
            scheduler = BatchScheduler(name, engine, self.metrics, self.settings.max_batch_size,
                                       self.settings.max_wait_ms, self.settings.max_queue_windows)
            language = entry.extra.get("default_language") or (None if entry.multilingual else "en")
            self.models[name] = ServedModel(entry, scheduler, language)
        self.metrics.pairs = [
            (name, teacher) for name, served in self.models.items()
            if served.entry.role == "student" and (teacher := _teacher_of(self.registry, served.entry)) in self.models
        ]

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
