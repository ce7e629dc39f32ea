"""Several models on the same manifests, side by side: MER, loops, guard and fallback counts, time.

Models are interleaved utterance by utterance (alternating which goes first), so machine drift hits
every model alike and the speed ratios are measured in one run, never across runs. Each model
is the served transcriber of :mod:`k2d.served` with its own DecodePolicy overrides, so the
ablation "teacher with short context, untrained" is the teacher with ``context="2/2"``.
Encoder time is measured separately per utterance (the encoder alone, on the policy's frames),
so the table can split where the time goes.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from tqdm import tqdm

from k2d.audio import decode_audio, duration
from k2d.context import ContextPolicy
from k2d.guard import LOOP_REASONS, sample_on
from k2d.manifest import read_manifest
from k2d.policy import DecodePolicy
from k2d.scoring import paired_bootstrap
from k2d_train.stages.s9_evaluate import EvaluateOptions, latency_stats, score, served_transcriber

POLICY_FIELDS = {f.name for f in fields(DecodePolicy)}


@dataclass
class Contender:
    """One model in a comparison, with what it decodes differently from the run's DecodePolicy."""

    label: str
    model: str
    overrides: dict = field(default_factory=dict)  # DecodePolicy fields
    # a second baseline (YAML ``baseline: true``): the contenders after it are paired against it as well, so one run
    # says how a student stands against both the teacher at 30 s and the teacher at its own short context
    baseline: bool = False

    def __post_init__(self):
        unknown = sorted(set(self.overrides) - POLICY_FIELDS)
        if unknown:
            raise ValueError(f"contender {self.label!r}: unknown settings {unknown}; known: {sorted(POLICY_FIELDS)}")
        self.policy(DecodePolicy())  # a bad value fails now, not after an hour of the others

    def policy(self, run: DecodePolicy) -> DecodePolicy:
        return replace(run, **self.overrides)

    @classmethod
    def parse(cls, spec: str) -> Contender:
        """The short form ``LABEL=MODEL[@CONTEXT][~FLAGS][^PENALTY]``. CONTEXT: ``full`` or ``PAD/BUCKET``;
        FLAGS joined by ``+``: ``none`` (no teacher fallback), ``loops`` (the default) or guard reasons that
        send a student's window to its teacher (``loops+logprob``), ``sample-all|loops|none`` (the teacher
        standing in: its temperature fallback), ``beam-N``; PENALTY: repetition penalty (``^1.0``: none)."""
        label, _, rest = spec.partition("=")
        rest, _, penalty = (rest or label).partition("^")
        rest, _, flags = rest.partition("~")
        name, _, context = rest.partition("@")
        overrides: dict = {}
        if context:
            overrides["context"] = context
        if penalty:
            overrides["repetition_penalty"] = float(penalty)
        reasons: list[str] = []
        for word in (flags.split("+") if flags else []):
            if word.startswith("sample-"):
                overrides["teacher_sampling"] = sample_on(word.removeprefix("sample-"))
            elif word.startswith("beam-"):
                overrides["beam_size"] = _beam(word)
            elif word == "none":
                overrides["teacher_fallback"] = False
            else:
                reasons += list(LOOP_REASONS) if word == "loops" else [word]
        if reasons:
            overrides["teacher_fallback_on"] = tuple(dict.fromkeys(reasons))
        return cls(label, name, overrides)

    @classmethod
    def short_context_teacher(cls, teacher: str, context: ContextPolicy) -> Contender:
        """The cheapest shortcut a trained student must beat: its teacher, untrained, served at the student's
        own short ``context``."""
        return cls("teacher, short context", teacher, {"context": context.spec()})

    @classmethod
    def from_yaml(cls, path: Path) -> list[Contender]:
        """``- {label: student, model: k2d-student, teacher_fallback: false, beam_size: 1}`` per contender (the
        first is the baseline; ``baseline: true`` makes a later one a baseline too); any other key is a DecodePolicy
        field."""
        import yaml

        items = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or []
        if not isinstance(items, list) or not all(isinstance(i, dict) and "model" in i for i in items):
            raise ValueError(f"{path}: a YAML list of {{label, model, ...DecodePolicy fields}}")
        out = []
        for item in items:
            item = dict(item)
            model = item.pop("model")
            label = str(item.pop("label", model))
            baseline = bool(item.pop("baseline", False))
            if "teacher_fallback_on" in item:
                item["teacher_fallback_on"] = tuple(item["teacher_fallback_on"])
            out.append(cls(label, model, item, baseline))
        return out


def _beam(flag: str) -> int:
    width = flag.removeprefix("beam-")
    if not width.isdigit() or not 1 <= int(width) <= 10:
        raise ValueError(f"{flag!r}: a beam flag is beam-N with N from 1 to 10")
    return int(width)


def compare(contenders: list[Contender], manifests: dict[str, Path], options: EvaluateOptions, store: Path,
            say=print) -> list[dict]:
    """One row per (set, contender): scores, loops, flagged windows, fallbacks, latency and encoder ms."""
    engines: dict = {}  # one load per (model, guard, context, penalty), however many contenders use it
    transcribers = {c.label: served_transcriber(c.model, replace(options, policy=c.policy(options.policy)), store,
                                                engines) for c in contenders}
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
                if options.time_encoder:
                    encode[contender.label].append(transcriber.engine.encoder_ms(audio))
                texts[contender.label].append(result.text)
                counts[contender.label]["flagged"] += result.flagged
                counts[contender.label]["fallbacks"] += result.fallbacks
                counts[contender.label]["trimmed"] += result.trimmed
        references = [row.text or "" for row, _ in items]
        groups = [group_of(row) for row, _ in items]
        audio_s = sum(duration(a) for _, a in items)
        baseline = texts[contenders[0].label]
        for contender in contenders:
            label = contender.label
            paired = {} if label == contenders[0].label else {
                "vs_baseline": asdict(paired_bootstrap(references, baseline, texts[label]))}
            row = {"set": set_name, "model": label, **score(references, texts[label]), **counts[label], **paired,
                   "groups": group_scores(groups, references, texts[label], baseline),
                   **latency_stats(latency[label]),
                   "encoder_ms_mean": round(statistics.fmean(encode[label]), 1) if encode[label] else None,
                   "audio_s": round(audio_s, 1), "rtfx": round(audio_s / (sum(latency[label]) / 1000), 2),
                   **_described(transcribers[label])}
            rows.append(row)
            say(f"{set_name:>10} {label:<28} MER {row['mer']:.3f}  loops {row['repetitions']}  "
                f"fallbacks {row['fallbacks']}  p50 {row['latency_ms_p50']:.0f} ms")
        _add_speedups(rows, set_name, contenders[0].label)
        _pair_with_later_baselines(rows, set_name, contenders, references, texts)
    rows.append({"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    return rows


def _described(transcriber) -> dict:
    """What a row must say about how its model decoded, read off the assembled model itself."""
    served = transcriber.served
    return {"context": served.engine.policy.describe(), "repetition_penalty": served.engine.repetition.value,
            "teacher_sampling": served.policy.teacher_sampling if served.teacher else None,
            "beam_size": served.policy.beam_size, "parameters": served.entry.parameters if served.entry else None}


def group_of(row) -> str:
    """The voice group a test row belongs to: its own ``group``, else its Mandarin voice (``gcin-5+flite-slt``
    → ``gcin-5``: Mandarin characters are most of the units), else ``all``."""
    return row.extra.get("group") or (row.extra.get("voice") or "all").split("+")[0]


def group_scores(groups: list[str], references: list[str], hypotheses: list[str],
                 baseline: list[str] | None = None) -> dict[str, dict]:
    """MER, loops and size of every voice group: one voice the model cannot hear is not averaged away; with
    the baseline's transcripts, the paired-bootstrap 95 % interval of the difference too."""
    out = {}
    for group in sorted(set(groups)):
        members = [i for i, g in enumerate(groups) if g == group]
        refs, hyps = [references[i] for i in members], [hypotheses[i] for i in members]
        scored = score(refs, hyps)
        out[group] = {"mer": scored["mer"], "repetitions": scored["repetitions"], "utterances": len(members)}
        if baseline is not None and hyps != [baseline[i] for i in members]:
            out[group]["vs_baseline"] = asdict(paired_bootstrap(refs, [baseline[i] for i in members], hyps))
    return out


def worse_than_baseline(rows: list[dict], baseline: str, tolerance: float = 0.0) -> list[str]:
    """Every (set, group, model) that is worse than the baseline (the teacher) on the same rows: a failure of
    the student, never a footnote. Worse means the paired 95 % interval of the difference lies above 0 where
    the row has one (a character on five utterances is not a verdict), else any gap above ``tolerance``."""
    failures = []
    for row in (r for r in rows if r.get("set") and r["model"] != baseline):
        base = next(r for r in rows if r.get("set") == row["set"] and r["model"] == baseline)
        for group, found in row.get("groups", {}).items():
            gap = found["mer"] - base["groups"][group]["mer"]
            paired = found.get("vs_baseline")
            if (paired["low"] > 0) if paired else gap > tolerance:
                interval = f", 95 % interval [{paired['low']:+.3f}, {paired['high']:+.3f}]" if paired else ""
                failures.append(f"{row['model']} worse than {baseline} on {row['set']} group {group} by {gap:+.3f} "
                                f"MER ({found['mer']:.3f} vs {base['groups'][group]['mer']:.3f}, "
                                f"{found['utterances']} utterances{interval})")
    return failures


def _add_speedups(rows: list[dict], set_name: str, baseline: str) -> None:
    """Latency ratios against the first contender (the teacher), same set, same run."""
    base = next(r for r in rows if r.get("set") == set_name and r["model"] == baseline)
    for row in rows:
        if row.get("set") == set_name:
            row.update(_speedups(base, row))


def _speedups(base: dict, row: dict) -> dict:
    """``row``'s p50 and mean latency ratios over ``base`` (same set, same run)."""
    return {"speedup_p50": round(base["latency_ms_p50"] / row["latency_ms_p50"], 2),
            "speedup_mean": round(base["latency_ms_mean"] / row["latency_ms_mean"], 2)}


def _pair_with_later_baselines(rows: list[dict], set_name: str, contenders: list[Contender], references: list[str],
                               texts: dict[str, list[str]]) -> None:
    """For each contender marked ``baseline`` after the first, every contender after it gets ``vs[label]``: the
    paired-bootstrap 95 % interval of its MER minus that baseline's and its speed-ups over it, same set, same run."""
    by_label = {r["model"]: r for r in rows if r.get("set") == set_name}
    for index, base in enumerate(contenders[1:], start=1):
        if not base.baseline:
            continue
        ref = by_label[base.label]
        for later in contenders[index + 1:]:
            row = by_label[later.label]
            row.setdefault("vs", {})[base.label] = {
                **asdict(paired_bootstrap(references, texts[base.label], texts[later.label])), **_speedups(ref, row)}


def later_baselines_markdown(rows: list[dict]) -> list[str]:
    """The table of every pairing against a baseline other than the first (``_pair_with_later_baselines``)."""
    lines = [f"| {r['set']} | {r['model']} | {base} | {r['mer']:.3f} | {v['difference']:+.3f} [{v['low']:+.3f}, "
             f"{v['high']:+.3f}] | {v['speedup_mean']:.2f}× / {v['speedup_p50']:.2f}× |"
             for r in rows if r.get("vs") for base, v in r["vs"].items()]
    if not lines:
        return []
    return ["Against a later baseline, paired (MER − the baseline's, 95 % interval; speed-up over it, same run):", "",
            "| set | model | baseline | MER | − baseline [95 %] | speed-up mean / p50 |", "|---|---|---|---|---|---|",
            *lines, ""]


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
                     f"{r['encoder_ms_mean'] or 0:.0f} | {r['latency_ms_mean']:.0f} / {r['latency_ms_p50']:.0f} | "
                     f"{r['speedup_mean']:.2f}× / {r['speedup_p50']:.2f}× |")
    rss = next((r["peak_rss_mb"] for r in rows if "peak_rss_mb" in r), None)
    if rss:
        lines += ["", f"Peak RSS of the comparing process (all models loaded): {rss} MB."]
    lines += ["", *later_baselines_markdown(rows), *group_markdown(rows)]
    return "\n".join(lines) + "\n"


def _cell(found: dict) -> str:
    """``MER (loops)``, and the paired interval of the difference to the baseline where there is one."""
    paired = found.get("vs_baseline")
    interval = f" [{paired['low']:+.3f}, {paired['high']:+.3f}]" if paired else ""
    return f"{found['mer']:.3f} ({found['repetitions']}){interval}"


def group_markdown(rows: list[dict]) -> list[str]:
    """Per voice group: every model's MER (loops) beside the first model's (the teacher's), then the failures."""
    scored = [r for r in rows if r.get("groups")]
    if not scored:
        return []
    models = list(dict.fromkeys(r["model"] for r in scored))
    lines = ["MER per voice group (loops in brackets; [low, high]: the paired-bootstrap 95 % interval of the model − "
             "the first model, the baseline; a FAIL needs the whole interval above 0):", "",
             "| set | group | utterances | " + " | ".join(models) + " |", "|---|---|---|" + "---|" * len(models)]
    for set_name in dict.fromkeys(r["set"] for r in scored):
        by_model = {r["model"]: r["groups"] for r in scored if r["set"] == set_name}
        for group, first in by_model[models[0]].items():
            cells = [_cell(by_model[m][group]) for m in models]
            lines.append(f"| {set_name} | {group} | {first['utterances']} | " + " | ".join(cells) + " |")
    failures = worse_than_baseline(scored, models[0])
    lines += ["", *(f"- **FAIL**: {f}" for f in failures)] if failures else ["", f"No group where a model is worse "
                                                                                  f"than {models[0]}."]
    return lines
