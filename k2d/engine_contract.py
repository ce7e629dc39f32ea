"""The one contract every served engine implements, and the registry that maps a model's kind to its engine.

Serving (the batch scheduler, the transcriber, the routes, evaluation) needs exactly this of an engine: a batch of
audio windows in, typed :class:`~k2d.engine.WindowResult` s out (text, tokens, language, log-prob, segments, words
where it has them), the feature frames a window costs and the options it honours (together, the batch key), whether it
knows a language, and a declared set of :class:`Capabilities` the server checks requests against instead of probing
attributes. Whisper on CTranslate2 (``k2d.engine``), the CTC head (``k2d.ctc_engine``) and the transducer
(``k2d.transducer_engine``) on ONNX Runtime implement it; a new engine implements it, calls :func:`register_engine`
once with its kind, and is served by a model whose registry entry names that kind (``serving.engine``), with no edit
to ``app/``."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from k2d.context import ContextPolicy
    from k2d.engine import DecodeOptions, WindowResult
    from k2d.guard import GuardOptions, RepetitionPenalty
    from k2d.registry import ModelEntry


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do, declared once."""

    multilingual: bool  # a request may choose among several languages (or have one detected)
    prompts: bool  # an initial prompt reaches a decoder
    translates: bool  # task=translate (still subject to a student's card)
    timestamps: bool = True  # segment times
    word_timestamps: bool = False  # per-word times
    streaming: bool = False  # live transcription over the WebSocket (``open_stream``)
    loops: bool = False  # an autoregressive decoder that can loop: guarded, with teacher fallback
    batching: bool = True  # windows of one batch run in one call
    detects_language: bool = True  # a request naming no language gets one detected (not: a trimmed vocabulary)


@runtime_checkable
class Engine(Protocol):
    """A served engine (see the module docstring)."""

    capabilities: Capabilities
    policy: ContextPolicy  # the context its windows get (part of the batch key via ``frames``)
    workers: int  # batches it runs at once (replicas x devices)
    guard: GuardOptions  # its loop guard (disabled for an engine that cannot loop)
    repetition: RepetitionPenalty

    def frames(self, window: np.ndarray) -> int:
        """Feature frames this window costs: windows with the same count batch together."""

    def knows_language(self, language: str) -> bool:
        """Whether a request naming ``language`` can be served."""

    def encoder_ms(self, audio: np.ndarray) -> float:
        """Time of the acoustic model alone on one utterance (evaluation's breakdown)."""

    def batch_options(self, options: DecodeOptions) -> Hashable:
        """The part of a request's options this engine honours, typed by its family (Whisper's whole
        :class:`~k2d.engine.DecodeOptions`; a CTC / transducer head's :class:`~k2d.ctc_engine.HeadDecodeOptions`).
        It keys the batch: windows whose options differ only in what the engine ignores share a call."""

    def transcribe_batch(self, windows: list[np.ndarray], languages: list[str | None],
                         options: DecodeOptions) -> list[WindowResult]:
        """One result per window, in order; ``None`` languages are the engine's to detect or default."""


@dataclass(frozen=True)
class EngineSpec:
    """What an engine factory gets: the model, the resolved runtime, and the serving contract's decode policy."""

    path: Path
    entry: ModelEntry | None
    device: str
    device_index: tuple[int, ...]
    compute_type: str
    replicas: int
    cpu_threads: int
    decode_threads: int
    guard: GuardOptions
    context: ContextPolicy | None
    penalty: RepetitionPenalty


EngineFactory = Callable[[EngineSpec], Engine]


def _whisper(spec: EngineSpec) -> Engine:
    from k2d.engine import WhisperEngine

    if not (spec.path / "model.bin").exists():
        raise ValueError(f"{spec.path}: not a CTranslate2 model (export it first: k2d models export)")
    return WhisperEngine(spec.path, spec.device, list(spec.device_index), spec.compute_type, spec.replicas,
                         spec.cpu_threads, spec.guard, spec.context, spec.penalty, spec.decode_threads)


def _ctc(spec: EngineSpec) -> Engine:
    from k2d.ctc_engine import CTCEngine

    return CTCEngine(spec.path, spec.device, spec.replicas * len(spec.device_index), spec.cpu_threads, spec.context)


def _transducer(spec: EngineSpec) -> Engine:
    from k2d.transducer_engine import TransducerEngine

    return TransducerEngine(spec.path, spec.device, spec.replicas * len(spec.device_index), spec.cpu_threads,
                            spec.context)


_FACTORIES: dict[str, EngineFactory] = {"whisper": _whisper, "ctc": _ctc, "transducer": _transducer}


def register_engine(kind: str, factory: EngineFactory) -> None:
    """Serve models whose registry entry says ``serving.engine: <kind>`` with ``factory``."""
    _FACTORIES[kind] = factory


def engine_kinds() -> list[str]:
    return sorted(_FACTORIES)


def engine_kind(path: Path, entry: ModelEntry | None) -> str:
    """The kind that runs a model: its entry's ``serving.engine``; a bare folder is a head when it has one."""
    import json

    from k2d.ctc_engine import HEAD_FILE

    if entry is not None and entry.serving.engine != "whisper":
        return entry.serving.engine
    head = Path(path) / HEAD_FILE  # a bare folder, or an entry from before the kind was recorded
    return json.loads(head.read_text()).get("kind", "ctc") if head.exists() else "whisper"


def create_engine(kind: str, spec: EngineSpec) -> Engine:
    if kind not in _FACTORIES:
        raise ValueError(f"no engine for kind {kind!r} (known: {', '.join(engine_kinds())}); "
                         "register one with k2d.engine_contract.register_engine")
    return _FACTORIES[kind](spec)


__all__ = ["Capabilities", "Engine", "EngineFactory", "EngineSpec", "create_engine", "engine_kind", "engine_kinds",
           "register_engine"]
