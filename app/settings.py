"""Every knob of the service, from ``K2D_*`` environment variables (pydantic-settings).

One settings object is built at start-up and handed to everything through FastAPI's
dependencies, so tests can start a server with any configuration without touching the process
environment.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from k2d.guard import LOOP_REASONS, SampleOn
from k2d.policy import DecodePolicy
from k2d.registry import ModelEntry
from k2d.served import Runtime

DEFAULT_MAX_BATCH_S = 2.0  # engine seconds per generate() call (app.batching bounds each call's work with it)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="K2D_", env_file=".env", extra="ignore", populate_by_name=True)

    models_dir: Path = Field(Path("models"), description="Model store folder (registry.json)")
    models: list[str] = Field(default_factory=list,
                              description="Models to load; default: the newest student and its teacher")
    default_model: str | None = Field(None, description="Model used when a request names none (default: the student)")

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a GPU when CTranslate2 sees one")
    device_index: list[int] = Field(default_factory=lambda: [0], description="GPUs to use (one worker set per index)")
    compute_type_cuda: str = Field("int8_float16", description="CTranslate2 compute type on a GPU")
    compute_type_cpu: str = Field("int8", description="CTranslate2 compute type on a CPU")
    replicas: int = Field(1, ge=1, description="Workers per device, all pulling from the same per-model queue")
    cpu_threads: int = Field(0, ge=0, description="Intra-op threads per CPU worker (0: CTranslate2's default)")
    cpu_decode_threads: int = Field(1, ge=0, description="Intra-op threads that decode on a CPU worker (a second "
                                    "instance of each model; 0: the same instance and threads as the encoder). "
                                    "Decoding steps are too small to gain from a second thread; the price is a "
                                    "second copy of each model's weights in memory")

    max_batch_size: int = Field(8, ge=1, description="Windows per generate() call, across requests")
    max_wait_ms: float = Field(0.0, ge=0, description="How long a batch waits for more windows after the first when "
                               "a worker is free (0: dispatch at once; windows that queue while the workers are busy "
                               "still share the next call). On a CPU a wait is pure latency; a GPU box may trade a few "
                               "ms for fuller batches (docker-compose.yml: 10)")
    max_batch_s: float = Field(DEFAULT_MAX_BATCH_S, ge=0, description="Engine seconds one generate() call may take "
                               "at the model's measured cost per window (beam and context included): batches are cut "
                               "to fit, never below one window, so an abandoned request's call in flight ends soon; "
                               "0 = max_batch_size alone")
    max_queue_windows: int = Field(256, ge=1, description="Per-model queue bound; beyond it requests get 429")
    max_queue_audio_s: float = Field(1200.0, gt=0, description="Per-model queue bound in audio seconds (admission: 429 "
                                     "before decoding), on top of the deadline: a request is admitted only if the work "
                                     "admitted ahead of it and its own estimated cost fit in its request timeout")
    max_concurrent_decodes: int = Field(4, ge=1, description="Uploads decoded (and VAD-split) at once; the rest wait")

    max_streams: int = Field(8, ge=1, description="WebSocket transcription streams served at once (more: close code "
                             "1013, try again later)")
    max_upload_mb: float = Field(25.0, gt=0, description="Largest upload accepted (413 beyond it)")
    max_audio_s: float = Field(600.0, gt=0, description="Longest audio accepted (seconds)")
    request_timeout_s: float = Field(120.0, gt=0, description="Deadline per request: upload, decode, VAD, queue, "
                                     "inference. Admission takes a request only if its estimated cost fits before its "
                                     "deadline behind the work admitted ahead of it (else 429 with Retry-After)")
    shutdown_grace_s: float | None = Field(None, gt=0, description="SIGTERM: time in-flight requests get to finish "
                                           "(default: request timeout + 10 s; never less than the request timeout, "
                                           "so it covers the deadline of every request admitted before the signal)")
    api_key: str | None = Field(None, description="If set, every route needs 'Authorization: Bearer <key>' (401 "
                                "without it; a WebSocket is closed with code 1008) but the probes /healthz and /readyz "
                                "and, with K2D_METRICS_PUBLIC, /metrics")
    metrics_public: bool = Field(False, description="Serve /metrics without the API key (a scraper that cannot send "
                                 "one); default: /metrics needs the key like every route")
    docs_public: bool = Field(False, description="Serve the API documentation (/docs, /redoc, /openapi.json) without "
                              "the API key; default: it needs the key like every route")
    ui: bool = Field(True, description="Serve the race page at / and /ui (student against teacher in a browser; the "
                     "page and its assets load without the API key, every call it makes needs it); false: 404")

    guard: bool = Field(True, description="Loop guard on every window: token budget, compression ratio, log-prob, "
                        "repeated n-gram")
    guard_tokens_per_s: float = Field(12.0, gt=0, description="Token budget per second of window audio")
    guard_compression_ratio: float = Field(2.4, gt=0, description="Flag above this gzip compression ratio")
    guard_logprob: float = Field(-1.0, description="Flag below this average log-probability")
    teacher_fallback: bool = Field(True, validation_alias=AliasChoices("K2D_TEACHER_FALLBACK", "K2D_FALLBACK"),
                                   description="Teacher fallback: a student's looping window is re-decoded by its "
                                   "teacher when that is served beside it (off: the student's own temperature fallback)")
    teacher_fallback_on: list[str] = Field(list(LOOP_REASONS), validation_alias=AliasChoices(
        "K2D_TEACHER_FALLBACK_ON", "K2D_GUARD_FALLBACK_ON"), description="Guard flags that send a student's window "
        "to its teacher (JSON list; add \"logprob\" to also send low-confidence windows)")
    teacher_sampling: SampleOn = Field("all", validation_alias=AliasChoices("K2D_TEACHER_SAMPLING",
                                                                            "K2D_FALLBACK_SAMPLING"),
                                       description="Temperature fallback of the teacher standing in for a student's "
                                       "window: on which of its own flags it samples at rising temperatures — all "
                                       "(Whisper's rule), loops, none")
    teacher_context: str | None = Field(None, description="Operator opt-in: serve non-students with a short context "
                                        "('PAD/BUCKET' seconds, e.g. '2/2'); default Whisper's 30 s")
    repetition_penalty: float | None = Field(None, ge=1.0, le=2.0, description="Override every model's own "
                                             "decoding repetition penalty (its registry entry's; 1.0: none)")
    shadow_fraction: float = Field(0.0, ge=0, le=1, description="Share of student windows also decoded by the teacher "
                                   "on a background lane (disagreement histogram)")
    harvest_dir: Path | None = Field(None, description="Opt-in: write shadowed windows (audio + teacher labels) here "
                                     "as a k2d run corpus")
    harvest_max_mb: float = Field(500.0, gt=0, description="Harvest size cap; the oldest files are rotated out")
    vad_min_silence_ms: int = Field(500, description="A pause this long ends a VAD speech region (Silero VAD)")
    rtfx_window_s: float = Field(60.0, gt=0, description="Sliding window of the RTFx gauges")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in the images)")
    port: int = Field(8000, description="Port to listen on")

    @model_validator(mode="after")
    def _grace_covers_a_request(self) -> Settings:
        """A drain shorter than the request timeout would cut long requests off with an error."""
        if self.shutdown_grace_s is not None and self.shutdown_grace_s < self.request_timeout_s:
            raise ValueError("shutdown_grace_s must be at least request_timeout_s")
        return self

    @property
    def drain_grace_s(self) -> float:
        return self.shutdown_grace_s or self.request_timeout_s + 10

    def decode_policy(self) -> DecodePolicy:
        """How every served model decodes (the same object ``k2d evaluate`` and ``k2d.load`` take)."""
        return DecodePolicy(guard=self.guard, guard_tokens_per_s=self.guard_tokens_per_s,
                            guard_compression_ratio=self.guard_compression_ratio, guard_logprob=self.guard_logprob,
                            teacher_fallback=self.teacher_fallback, teacher_fallback_on=tuple(self.teacher_fallback_on),
                            teacher_sampling=self.teacher_sampling, repetition_penalty=self.repetition_penalty,
                            vad_min_silence_ms=self.vad_min_silence_ms, teacher_context=self.teacher_context)

    def policy_for(self, entry: ModelEntry) -> DecodePolicy:
        """Students keep their own context; other models get Whisper's 30 s unless ``teacher_context`` opts in."""
        policy = self.decode_policy()
        return policy if entry.role == "student" else replace(policy, context=self.teacher_context)

    def runtime(self) -> Runtime:
        return Runtime(self.device, tuple(self.device_index), self.compute_type_cpu, self.compute_type_cuda,
                       self.replicas, self.cpu_threads, self.cpu_decode_threads)


def reference() -> str:
    """Every setting as a Markdown table (docs/settings.md is this text; a test keeps the two equal)."""
    lines = ["# Service settings", "", "Every knob of `k2d serve`, read from `K2D_*` environment variables (or a `.env` "
             "file). Generated from `app/settings.py` by `k2d settings`; do not edit by hand.", "",
             "| variable | default | what it does |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default
        aliases = getattr(field.validation_alias, "choices", None) or []
        names = [f"`{a}`" for a in aliases] or [f"`K2D_{name.upper()}`"]
        shown = "" if default is None else f"`{json_default(default)}`"
        lines.append(f"| {names[0]}{' (was ' + ', '.join(names[1:]) + ')' if names[1:] else ''} | {shown} | "
                     f"{(field.description or '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def json_default(value) -> str:
    import json

    return str(value) if isinstance(value, Path) else json.dumps(value) if isinstance(value, list | bool) else str(value)
