"""Several models on the same manifests, side by side: MER, loops, guard and fallback counts, time.

Models are interleaved utterance by utterance (alternating which goes first), so machine drift hits
every model alike and the speed ratios are measured in one run, never across runs. Each model
is a ``ServedTranscriber`` (the serving path) with an optional context-policy override, so the
ablation "teacher with short context, untrained" is the teacher with ``context="2/2"``.
Encoder time is measured separately per utterance (the encoder alone, on the policy's frames),
so the table can split where the time goes.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from k2d.audio import decode_audio, duration
from k2d.features import log_mel
from k2d.guard import LOOP_REASONS, SampleOn, sample_on
from k2d.manifest import read_manifest
from k2d_train.stages.s7_evaluate import EvaluateOptions, ServedTranscriber, latency_stats, score


@dataclass
class Contender:
    label: str
    model: str
    context: str | None = None  # None: the model's own policy
    fallback: bool = True
    fallback_on: tuple[str, ...] = LOOP_REASONS  # guard flags that send a student's window to its teacher
    repetition_penalty: float | None = None  # None: the model's own
    fallback_sampling: SampleOn | None = None  # None: the run's (EvaluateOptions.fallback_sampling)
    beam_size: int | None = None  # None: the run's (EvaluateOptions.beam_size)

    @classmethod
    def parse(cls, spec: str, fallback: bool = True) -> Contender:
        """``LABEL=MODEL[@CONTEXT][~FLAGS][^PENALTY]``; FLAGS: ``none``, ``loops`` (default) or reasons
        joined by ``+`` (e.g. ``~loops+logprob``: also fall back on low confidence), plus ``sample-all``,
        ``sample-loops`` or ``sample-none`` (which of its own flags the teacher standing in samples on)
        and ``beam-N`` (this contender's beam width, its teacher standing in included, as in the server);
        PENALTY overrides the model's repetition penalty (``^1.0``: none)."""
        label, _, rest = spec.partition("=")
        rest, _, penalty = (rest or label).partition("^")
        rest, _, flags = rest.partition("~")
        name, _, context = rest.partition("@")
        words = (flags or "loops").split("+")
        sampling = [sample_on(w.removeprefix("sample-")) for w in words if w.startswith("sample-")]
        beams = [_beam(w) for w in words if w.startswith("beam-")]
        reasons: list[str] = []
        for flag in [w for w in words if not w.startswith(("sample-", "beam-"))] or ["loops"]:
            reasons += list(LOOP_REASONS) if flag == "loops" else [] if flag == "none" else [flag]
        return cls(label, name, context or None, fallback and bool(reasons), tuple(reasons) or LOOP_REASONS,
                   float(penalty) if penalty else None, sampling[-1] if sampling else None,
                   beams[-1] if beams else None)

    def options(self, run: EvaluateOptions) -> EvaluateOptions:
        """The run's options with this contender's own: what it sets, it overrides (None keeps the run's)."""
        own = {"beam_size": self.beam_size, "fallback_sampling": self.fallback_sampling}
        return replace(run, context=self.context, fallback=self.fallback, fallback_on=self.fallback_on,
                       repetition_penalty=self.repetition_penalty,
                       **{key: value for key, value in own.items() if value is not None})


def _beam(flag: str) -> int:
    width = flag.removeprefix("beam-")
    if not width.isdigit() or not 1 <= int(width) <= 10:
        raise ValueError(f"{flag!r}: a beam flag is beam-N with N from 1 to 10")
    return int(width)


def encoder_ms(transcriber: ServedTranscriber, audio) -> float:
    """Encoder-only time for one utterance at the model's context (VAD off: the utterance is one window)."""
    import ctranslate2

    engine = transcriber.engine
    features = log_mel(audio[: 30 * 16000], engine.frames(audio[: 30 * 16000]), num_mel_bins=engine.mels)
    storage = ctranslate2.StorageView.from_array(features[None])
    start = time.perf_counter()
    engine.model.encode(storage, to_cpu=True)
    return (time.perf_counter() - start) * 1000


def compare(contenders: list[Contender], manifests: dict[str, Path], options: EvaluateOptions, store: Path,
            say=print) -> list[dict]:
    """One row per (set, contender): scores, loops, flagged windows, fallbacks, latency and encoder ms."""
    engines: dict = {}  # one load per (model, guard, context), however many contenders use it
    transcribers = {c.label: ServedTranscriber(c.model, c.options(options), store, engines) for c in contenders}
    rows = []
    for set_name, manifest in manifests.items():
        items = [(row, decode_audio(row.path(manifest))) for row in read_manifest(manifest)]
        texts = {c.label: [] for c in contenders}
        latency = {c.label: [] for c in contenders}
        encode = {c.label: [] for c in contenders}
        counts = {c.label: {"flagged": 0, "fallbacks": 0, "trimmed": 0} for c in contenders}
        for i, (row, audio) in enumerate(tqdm(items, desc=f"compare on {set_name}", unit="utt")):
            order = contenders if i % 2 == 0 else list(reversed(contenders))
            for contender in order:
                transcriber = transcribers[contender.label]
                start = time.perf_counter()
                result = transcriber(audio, options.language or row.extra.get("language"))
                latency[contender.label].append((time.perf_counter() - start) * 1000)
                encode[contender.label].append(encoder_ms(transcriber, audio))
                texts[contender.label].append(result.text)
                counts[contender.label]["flagged"] += result.flagged
                counts[contender.label]["fallbacks"] += result.fallbacks
                counts[contender.label]["trimmed"] += result.trimmed
        references = [row.text or "" for row, _ in items]
        groups = [group_of(row) for row, _ in items]
        audio_s = sum(duration(a) for _, a in items)
        for contender in contenders:
            label = contender.label
            row = {"set": set_name, "model": label, **score(references, texts[label]), **counts[label],
                   "groups": group_scores(groups, references, texts[label]),
                   **latency_stats(latency[label]), "encoder_ms_mean": round(statistics.fmean(encode[label]), 1),
                   "audio_s": round(audio_s, 1), "rtfx": round(audio_s / (sum(latency[label]) / 1000), 2),
                   "context": transcribers[label].engine.policy.describe(),
                   "repetition_penalty": transcribers[label].engine.repetition.value,
                   "fallback_sampling": transcribers[label].fallback_sampling if transcribers[label].teacher else None,
                   "beam_size": transcribers[label].options.beam_size,
                   "parameters": transcribers[label].parameters}
            rows.append(row)
            say(f"{set_name:>10} {label:<28} MER {row['mer']:.3f}  loops {row['repetitions']}  "
                f"fallbacks {row['fallbacks']}  p50 {row['latency_ms_p50']:.0f} ms")
        _add_speedups(rows, set_name, contenders[0].label)
    rows.append({"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    return rows


def group_of(row) -> str:
    """The voice group a test row belongs to: its own ``group``, else its Mandarin voice (``gcin-5+flite-slt``
    → ``gcin-5``: Mandarin characters are most of the units), else ``all``."""
    return row.extra.get("group") or (row.extra.get("voice") or "all").split("+")[0]


def group_scores(groups: list[str], references: list[str], hypotheses: list[str]) -> dict[str, dict]:
    """MER, loops and size of every voice group: one voice the model cannot hear is not averaged away."""
    out = {}
    for group in sorted(set(groups)):
        members = [i for i, g in enumerate(groups) if g == group]
        scored = score([references[i] for i in members], [hypotheses[i] for i in members])
        out[group] = {"mer": scored["mer"], "repetitions": scored["repetitions"], "utterances": len(members)}
    return out


def worse_than_baseline(rows: list[dict], baseline: str, tolerance: float = 0.0) -> list[str]:
    """Every (set, group, model) whose MER is above the baseline's (the teacher's) on the same rows: a
    failure of the student, never a footnote."""
    failures = []
    for row in (r for r in rows if r.get("set") and r["model"] != baseline):
        base = next(r for r in rows if r.get("set") == row["set"] and r["model"] == baseline)
        for group, found in row.get("groups", {}).items():
            gap = found["mer"] - base["groups"][group]["mer"]
            if gap > tolerance:
                failures.append(f"{row['model']} worse than {baseline} on {row['set']} group {group} by {gap:+.3f} "
                                f"MER ({found['mer']:.3f} vs {base['groups'][group]['mer']:.3f}, "
                                f"{found['utterances']} utterances)")
    return failures


def _add_speedups(rows: list[dict], set_name: str, baseline: str) -> None:
    """Latency ratios against the first contender (the teacher), same set, same run."""
    base = next(r for r in rows if r.get("set") == set_name and r["model"] == baseline)
    for row in rows:
        if row.get("set") == set_name:
            row["speedup_p50"] = round(base["latency_ms_p50"] / row["latency_ms_p50"], 2)
            row["speedup_mean"] = round(base["latency_ms_mean"] / row["latency_ms_mean"], 2)


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"`{command}`", "",
             "| set | model | context | rep. penalty | MER | CER zh | WER en | loops | flagged | trimmed | fallbacks | "
             "encoder ms | e2e ms mean / p50 | speed-up mean / p50 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "set" not in r:
            continue
        lines.append(f"| {r['set']} | {r['model']} | {r['context']} | {r.get('repetition_penalty', 1.0):g} | "
                     f"{r['mer']:.3f} | {r['cer_zh']:.3f} | "
                     f"{r['wer_en']:.3f} | {r['repetitions']} | {r['flagged']} | {r['trimmed']} | {r['fallbacks']} | "
                     f"{r['encoder_ms_mean']:.0f} | {r['latency_ms_mean']:.0f} / {r['latency_ms_p50']:.0f} | "
                     f"{r['speedup_mean']:.2f}× / {r['speedup_p50']:.2f}× |")
    rss = next((r["peak_rss_mb"] for r in rows if "peak_rss_mb" in r), None)
    if rss:
        lines += ["", f"Peak RSS of the comparing process (all models loaded): {rss} MB."]
    lines += ["", *group_markdown(rows)]
    return "\n".join(lines) + "\n"


def group_markdown(rows: list[dict]) -> list[str]:
    """Per voice group: every model's MER (loops) beside the first model's (the teacher's), then the failures."""
    scored = [r for r in rows if r.get("groups")]
    if not scored:
        return []
    models = list(dict.fromkeys(r["model"] for r in scored))
    lines = ["MER per voice group (loops in brackets; the first model is the baseline):", "",
             "| set | group | utterances | " + " | ".join(models) + " |", "|---|---|---|" + "---|" * len(models)]
    for set_name in dict.fromkeys(r["set"] for r in scored):
        by_model = {r["model"]: r["groups"] for r in scored if r["set"] == set_name}
        for group, first in by_model[models[0]].items():
            cells = [f"{by_model[m][group]['mer']:.3f} ({by_model[m][group]['repetitions']})" for m in models]
            lines.append(f"| {set_name} | {group} | {first['utterances']} | " + " | ".join(cells) + " |")
    failures = worse_than_baseline(scored, models[0])
    lines += ["", *(f"- **FAIL**: {f}" for f in failures)] if failures else ["", f"No group where a model is worse "
                                                                                  f"than {models[0]}."]
    return lines
