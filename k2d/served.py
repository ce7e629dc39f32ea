"""The one assembly of a served model: registry entry → engine with its guard, context policy and repetition
penalty → its teacher behind it for teacher fallback.

The server (``app/model_manager.py``), ``k2d evaluate`` / ``k2d compare`` and the Python API
(:func:`k2d.load`) all build their models here, so "what evaluation measured is what users get" holds
by construction, not by keeping copies in sync.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from k2d.engine_contract import Engine
from k2d.policy import DecodePolicy
from k2d.registry import ModelEntry, Registry, teacher_of


@dataclass(frozen=True)
class Runtime:
    """Where models run. ``device="auto"``: a GPU when CTranslate2 sees one."""

    device: str = "auto"
    device_index: tuple[int, ...] = (0,)
    compute_type_cpu: str = "int8"
    compute_type_cuda: str = "int8_float16"
    replicas: int = 1  # workers per device pulling from one queue
    cpu_threads: int = 0  # intra-op threads of the encoding instance (0: CTranslate2's default)
    decode_threads: int = 1  # a second CPU instance with this many threads decodes (0: the same instance)

    def resolve(self) -> tuple[str, str, list[int]]:
        """(device, compute type, device indices) actually used."""
        from k2d.engine import cuda_available

        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"unknown device {self.device!r}; choose auto, cpu or cuda")
        cuda = self.device == "cuda" or (self.device == "auto" and cuda_available())
        if cuda:
            return "cuda", self.compute_type_cuda, list(self.device_index)
        return "cpu", self.compute_type_cpu, [0]


@dataclass
class Served:
    """A model as it is served: its engine, and the teacher its loops go to (None: none served)."""

    name: str
    entry: ModelEntry | None  # None: a bare model folder, not in the registry
    engine: Engine  # the contract every engine implements (k2d.engine_contract)
    policy: DecodePolicy
    teacher: Served | None = None

    @property
    def role(self) -> str | None:
        return self.entry.role if self.entry else None

    @property
    def default_language(self) -> str | None:
        """The language a request gets when it names none: the model's own (zh for a zh-en student); an
        English-only model is always en; a multilingual one without a default detects it."""
        if self.entry is not None and self.entry.serving.default_language:
            return self.entry.serving.default_language
        return None if self.engine.capabilities.multilingual else "en"


EngineCache = dict  # (path, guard, context, penalty, runtime) → engine: one load however many users


def build_engine(path: Path, entry: ModelEntry | None, policy: DecodePolicy, runtime: Runtime, cascades: bool,
                 cache: EngineCache | None = None) -> Engine:
    """The engine of one model, made by the factory its kind registered (:mod:`k2d.engine_contract`): its guard
    (sending loops to a teacher instead of sampling when it ``cascades``), its context (the policy's override,
    else its own), its repetition penalty."""
    from k2d.engine_contract import EngineSpec, create_engine, engine_kind
    from k2d.guard import RepetitionPenalty

    kind = engine_kind(path, entry)
    guard = policy.guard_for(cascades)
    context = policy.context_policy()
    penalty = policy.penalty(entry.repetition_penalty if entry is not None else RepetitionPenalty())
    device, compute_type, indices = runtime.resolve()
    key = (Path(path).resolve(), kind, guard, context, penalty, runtime)
    if cache is not None and key in cache:
        return cache[key]
    engine = create_engine(kind, EngineSpec(Path(path), entry, device, tuple(indices), compute_type, runtime.replicas,
                                            runtime.cpu_threads, runtime.decode_threads, guard, context, penalty))
    if cache is not None:
        cache[key] = engine
    return engine


def serve_models(registry: Registry, names: list[str], policy_for: Callable[[ModelEntry], DecodePolicy],
                 runtime: Runtime, cache: EngineCache | None = None) -> dict[str, Served]:
    """Every named model, each student linked to its teacher when that teacher is among ``names`` and its
    policy wants teacher fallback (the server's case: student and teacher side by side)."""
    entries = {name: registry.get(name) for name in names}
    teachers = {name: teacher_of(registry, entry) for name, entry in entries.items() if entry.role == "student"}
    served: dict[str, Served] = {}
    for name, entry in entries.items():
        if entry.format == "transformers":
            raise ValueError(f"{name} is a {entry.format} model; serve its CTranslate2 (or ONNX) export")
        policy = policy_for(entry)
        cascades = policy.teacher_fallback and teachers.get(name) in entries
        engine = build_engine(entry.resolve(registry.store), entry, policy, runtime, cascades, cache)
        served[name] = Served(name, entry, engine, policy)
    for name, teacher in teachers.items():
        if served[name].engine.guard.teacher_on and teacher in served:
            served[name].teacher = served[teacher]
    return served


def serve_one(model: str, store: Path | None, policy: DecodePolicy = DecodePolicy(), runtime: Runtime = Runtime(),
              cache: EngineCache | None = None) -> Served:
    """One model by registered name or folder, with its teacher behind it (when the store has it and the
    policy wants teacher fallback); the teacher decodes with its own context, or the policy's ``teacher_context``."""
    from k2d.registry import resolve_model

    path, entry = resolve_model(model, store)
    registry = Registry(store)
    teacher = teacher_of(registry, entry) if entry is not None and entry.role == "student" else None
    if entry is None or entry.name not in registry:
        return Served(model, entry, build_engine(path, entry, policy, runtime, False, cache), policy)
    cache = {} if cache is None else cache
    wanted = bool(teacher) and policy.teacher_fallback
    # built as it will be served beside its teacher (the cache hands serve_models this very engine); the
    # teacher is loaded only if the engine's guard sends windows to one (serve_models' own rule; a CTC head's never)
    engine = build_engine(path, entry, policy, runtime, wanted, cache)
    if not engine.guard.teacher_on:
        return Served(entry.name, entry, engine, policy)
    own_context = replace(policy, context=policy.teacher_context)
    return serve_models(registry, [entry.name, teacher], lambda e: policy if e.name == entry.name else own_context,
                        runtime, cache)[entry.name]

