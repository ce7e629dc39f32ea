"""Prometheus metrics, labelled by model, with live RTFx and the student's speed-up over the teacher.

RTFx over a sliding window = audio seconds processed ÷ engine seconds spent, per model; the
speed-up gauge divides the student's by the teacher's, so the dashboard shows the distillation's
payoff under the traffic actually being served.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    def __init__(self, window_s: float = 60.0):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("k2d_requests", "Requests by model and HTTP status", ["model", "status"], registry=r)
        self.request_seconds = Histogram("k2d_request_seconds", "Request latency (upload to response)", ["model"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("k2d_queue_seconds", "Time a window waits before its batch starts", ["model"],
                                       buckets=QUEUE_BUCKETS, registry=r)
        self.inference_seconds = Histogram("k2d_batch_inference_seconds", "Engine time per batch", ["model"],
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("k2d_batch_size", "Windows per generate() call", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.audio_seconds = Counter("k2d_audio_seconds", "Audio seconds transcribed", ["model"], registry=r)
        self.engine_seconds = Counter("k2d_inference_seconds", "Engine seconds spent", ["model"], registry=r)
        self.tokens = Counter("k2d_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.queue_depth = Gauge("k2d_queue_depth", "Windows waiting in the model's queue", ["model"], registry=r)
        self.in_flight = Gauge("k2d_in_flight_requests", "Requests being served", ["model"], registry=r)
        self.admitted = Gauge("k2d_admitted_requests", "Requests admitted and not yet finished", ["model"], registry=r)
        self.admitted_work = Gauge("k2d_admitted_work_seconds", "Estimated compute seconds the admitted requests "
                                   "still need", ["model"], registry=r)
        self.cost_ratio = Gauge("k2d_cost_ratio", "Learned compute seconds per nominal second (audio + encoder "
                                "input) of a request, teacher fallback included", ["model"], registry=r)
        self.rtfx = Gauge("k2d_rtfx", "Audio seconds per engine second over a sliding window", ["model"], registry=r)
        self.speedup = Gauge("k2d_student_speedup", "Student RTFx divided by teacher RTFx", ["student", "teacher"],
                             registry=r)
        self.guard = Counter("k2d_guard_triggered", "Windows the loop guard flagged, by reason", ["model", "reason"],
                             registry=r)
        self.fallback = Counter("k2d_fallback", "Student windows re-decoded by the teacher", ["student", "teacher", "reason"],
                                registry=r)
        self.shadow = Histogram("k2d_shadow_disagreement", "MER between student and teacher on shadowed windows",
                                ["student", "teacher"], buckets=(0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0),
                                registry=r)
        self.harvested = Counter("k2d_harvested_windows", "Shadowed windows written to the harvest folder", ["student"],
                                 registry=r)
        self.window_s = window_s
        self._samples: dict[str, deque] = {}
        self._lock = threading.Lock()
        self.pairs: list[tuple[str, str]] = []  # (student, teacher) served side by side

    def record_batch(self, model: str, size: int, audio_s: float, engine_s: float, tokens: int) -> None:
        self.batch_size.labels(model).observe(size)
        self.inference_seconds.labels(model).observe(engine_s)
        self.audio_seconds.labels(model).inc(audio_s)
        self.engine_seconds.labels(model).inc(engine_s)
        self.tokens.labels(model).inc(tokens)
        now = time.monotonic()
        with self._lock:
            samples = self._samples.setdefault(model, deque())
            samples.append((now, audio_s, engine_s))
            while samples and now - samples[0][0] > self.window_s:
                samples.popleft()
            self.rtfx.labels(model).set(self._rtfx(model))
            for student, teacher in self.pairs:
                teacher_rtfx = self._rtfx(teacher)
                if teacher_rtfx > 0 and self._rtfx(student) > 0:
                    self.speedup.labels(student, teacher).set(self._rtfx(student) / teacher_rtfx)

    def declare(self, models: list[str], pairs: list[tuple[str, str]]) -> None:
        """Export every guard / fallback / shadow series at 0 from the start: dashboards and alerts
        see "none yet" instead of "no data"."""
        from k2d.guard import REASONS

        for model in models:
            self.batch_size.labels(model)  # the window count the fallback alert divides by
            self.admitted.labels(model).set(0)
            self.admitted_work.labels(model).set(0)
            for reason in REASONS:
                self.guard.labels(model, reason)
        for student, teacher in pairs:
            for reason in REASONS:
                self.fallback.labels(student, teacher, reason)
            self.shadow.labels(student, teacher)
            self.harvested.labels(student)

    def _rtfx(self, model: str) -> float:
        samples = self._samples.get(model) or ()
        engine = sum(s[2] for s in samples)
        return sum(s[1] for s in samples) / engine if engine > 0 else 0.0
