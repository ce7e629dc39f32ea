"""What a request costs the machine, learned from what requests really cost.

**Compute seconds.** Every engine call is charged the wall-clock time it ran, shared with the engine calls
that ran beside it (:class:`BusyClock`: two batches running together for 2 s are charged 1 s each). So the
charges of the models' work add up to the time the engines were busy, and the compute seconds admitted but
not yet run are the time it will take to run them, whichever models and queues the work goes to. An
upload's decoding and VAD are charged their wall-clock time in full (they are short, and mostly run on a
core the engines leave free).

**Nominal seconds.** What a request asks of a model before it is decoded: its audio seconds (what the
decoder writes about) plus the seconds of encoder input its windows get (the model's context: Whisper's
30 s a window, a short-context student's audio + its margin). A 3 s clip is 33 nominal seconds for Whisper
and about 7 for the demo student.

**The estimate.** Per model, compute seconds per nominal second, an exponentially weighted ratio of the
requests that finished (:class:`CostEstimator`): it includes what batching saves, what teacher fallback
costs on the traffic actually served (a student's window re-decoded by its teacher is charged to the
student's request) and the machine's speed. Before a model's first request is measured, a prior per
million parameters stands in. Before an upload is decoded, its windows are only planned from its declared
duration (as few as fit); VAD cuts at pauses into more, and a 30 s-context model pays 30 s for each, so a
second weighted ratio, of the nominal seconds requests turned out to have to those planned, corrects the plan.
The estimate errs dear by the weighted spread of the per-request ratios (:meth:`CostEstimator.margin`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from k2d.audio import SAMPLE_RATE
from k2d.context import FRAMES_PER_S

COST_WEIGHT = 0.2  # weight of the newest finished request in a model's cost per nominal second
PRIOR_CPU = 0.002  # compute s per nominal s per million parameters before the first measurement (2-core x86_64,
PRIOR_GPU = 0.0002  # Whisper base ~0.15: a 60 s upload ~20 s, about what it takes on a slow, busy 2-core CPU)
DEFAULT_PARAMS_M = 75.0  # a model whose card does not say


def weighted_update(state: tuple[float, float] | None, value: float, weight: float) -> tuple[float, float]:
    """An exponentially weighted (mean, variance) after ``value`` (West's update); the first value starts it."""
    if state is None:
        return value, 0.0
    mean, variance = state
    delta = value - mean
    return mean + weight * delta, (1 - weight) * (variance + weight * delta * delta)


def nominal_s(windows: list[float], frames: Callable[[float], int]) -> float:
    """Nominal seconds of these windows (seconds each): audio + the encoder input the model gives each."""
    return sum(seconds + frames(seconds) / FRAMES_PER_S for seconds in windows)


def planned_windows(duration_s: float, max_window_s: float) -> list[float]:
    """The windows a ``duration_s`` upload will likely be cut into before it is decoded: as few as fit."""
    if duration_s <= 0:
        return []
    count = max(1, math.ceil(duration_s / max_window_s - 1e-9))
    return [duration_s / count] * count


def frames_of(engine) -> Callable[[float], int]:
    """The engine's context policy as a function of a window's seconds."""
    return lambda seconds: engine.policy.frames(int(seconds * SAMPLE_RATE))


class BusyClock:
    """Processor sharing: while ``n`` engine calls run, each is charged ``1/n`` of the wall clock.

    Shared by every model's scheduler: the models run on the same cores (or GPU), so two calls at
    once each take longer, and charging both their full time would count the machine twice."""

    def __init__(self, now: Callable[[], float] = time.monotonic):
        self.now = now
        self.virtual, self.running = 0.0, 0
        self._at = now()

    def _advance(self) -> None:
        now = self.now()
        if self.running:
            self.virtual += (now - self._at) / self.running
        self._at = now

    def start(self) -> float:
        """A call starts; keep the token for :meth:`stop`."""
        self._advance()
        self.running += 1
        return self.virtual

    def stop(self, token: float) -> float:
        """The call that started at ``token`` ended: its charge in compute seconds."""
        self._advance()
        self.running = max(0, self.running - 1)
        return self.virtual - token


class CostEstimator:
    """Per model: compute seconds per nominal second, weighted toward the requests that finished last."""

    def __init__(self, prior_per_m: float, weight: float = COST_WEIGHT):
        self.prior_per_m, self.weight = prior_per_m, weight
        self._sums: dict[str, tuple[float, float]] = {}  # model -> weighted (compute s, nominal s)
        self._plans: dict[str, tuple[float, float]] = {}  # model -> weighted (nominal s cut, nominal s planned)
        self._params: dict[str, float] = {}  # model -> millions of parameters (for the prior)
        self._spread: dict[str, tuple[float, float]] = {}  # model -> weighted mean, variance of per-request ratios

    def declare(self, model: str, parameters: int | None) -> None:
        self._params[model] = parameters / 1e6 if parameters else DEFAULT_PARAMS_M

    def known(self, model: str) -> bool:
        return model in self._params

    def prior(self, model: str) -> float:
        return self.prior_per_m * self._params.get(model, DEFAULT_PARAMS_M)

    def measured(self, model: str) -> bool:
        return model in self._sums

    def ratio(self, model: str) -> float:
        """Compute seconds per nominal second (the prior until one of the model's requests has finished)."""
        if model not in self._sums:
            return self.prior(model)
        compute, nominal = self._sums[model]
        return compute / nominal if nominal > 0 else self.prior(model)

    def margin(self, model: str) -> float:
        """One weighted standard deviation of the per-request ratios: requests of one model do not cost
        alike (a student's request whose windows loop pays for its teacher too), and admitting on the mean
        alone lets the dearer half of a full deadline's worth of requests miss it. Refusing is the cheap mistake."""
        return math.sqrt(self._spread[model][1]) if model in self._spread else 0.0

    def estimate(self, model: str, nominal: float) -> float:
        """Compute seconds of windows whose nominal seconds are known (the upload is cut), erring dear by
        :meth:`margin`."""
        return (self.ratio(model) + self.margin(model)) * nominal

    def planned(self, model: str, nominal: float) -> float:
        """Nominal seconds a plan from the declared duration will likely turn out to be (the plan itself until
        a request of the model has been cut; never less than the plan: refusing is the cheap mistake)."""
        if model not in self._plans:
            return nominal
        cut, planned = self._plans[model]
        return nominal * max(1.0, cut / planned) if planned > 0 else nominal

    def observe_plan(self, model: str, planned: float, cut: float) -> None:
        """A request was cut into windows of ``cut`` nominal seconds where ``planned`` were planned."""
        if planned <= 0 or cut <= 0:
            return  # nothing declared, or nothing but silence: says nothing about how speech is cut
        old = self._plans.get(model)
        w = self.weight
        self._plans[model] = (cut, planned) if old is None else ((1 - w) * old[0] + w * cut, (1 - w) * old[1] + w * planned)

    def observe(self, model: str, nominal: float, compute: float) -> None:
        """A finished request: ``compute`` seconds charged (its teacher fallback included) for ``nominal``."""
        if nominal <= 0 or compute < 0 or not math.isfinite(compute):
            return
        self._spread[model] = weighted_update(self._spread.get(model), compute / nominal, self.weight)
        if model not in self._sums:
            self._sums[model] = (compute, nominal)  # the first measurement replaces the prior outright
            return
        old_compute, old_nominal = self._sums[model]
        w = self.weight
        self._sums[model] = ((1 - w) * old_compute + w * compute, (1 - w) * old_nominal + w * nominal)
