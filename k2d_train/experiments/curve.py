"""``k2d curve RUN.yaml``: students of several decoder depths trained on growing shares of one corpus, scored
side by side with their teacher — a learning curve, not a single point.

It starts where ``k2d run`` stops after stage 5: the kept chunks and the distilled short-context
encoder. Every size is a *prefix* of the same kept chunks (in lecture order), so the 1-hour student
saw everything the 0.3-hour one saw; every depth keeps the teacher's first and last decoder layers
(stage 4's spacing) under the same frozen encoder. Training is stage 6's own loop with the teacher's
top-k targets cached once per size (``DistillOptions.teacher_topk``) and the teacher's decoder reading
the student's states (``kl_states: student``): no 30 s encoder pass, student-only steps.

``heads`` adds a CTC and/or transducer head per size, trained on the same frozen encoder's states (stage 7's
training and ONNX export), on the same plot. The students are scored through the serving path (``k2d
compare``) against the teacher at 30 s and the teacher at the student's own short context (what anyone gets
without training), with paired-bootstrap intervals per set and voice group; ``curve.json``, ``README.md``
and ``curve.png`` go to ``--out``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from k2d.context import POLICY_FILE, ContextPolicy
from k2d.manifest import read_manifest, write_manifest
from k2d_train.pipeline.config import TEST_SETS, RunConfig
from k2d_train.store.operations import hf_name


@dataclass
class CurveOptions:
    layers: list[int] = field(default_factory=lambda: [2])
    hours: list[float] = field(default_factory=lambda: [0.3, 1.0, 3.0])
    epochs: float = 6.0  # passes over each size's chunks: bigger sizes train proportionally longer
    min_steps: int = 100
    max_steps: int = 4000
    topk: int = 64  # teacher tokens kept per position, cached once; 0: the full KL, the teacher's decoder every step
    learning_rate: float | None = None  # None: the config's distill.learning_rate
    batch_size: int | None = None  # None: the config's distill.batch_size
    eval_every: int = 0  # 0: ~4 dev evaluations per run
    sets: list[str] = field(default_factory=lambda: list(TEST_SETS))
    heads: list[str] = field(default_factory=list)  # ctc and/or transducer heads on the same encoder, per size
    skip: list[str] = field(default_factory=list)  # points left out by folder name (d4-3h, ctc-1h): a partial grid
    earlier: list[str] = field(default_factory=list)  # curve.json of earlier runs drawn with this one (see merged)
    # a recipe variant's name (e.g. the config's distill options changed): its points get their own folders, model
    # names and lines (d2-3h-fast), beside those of the same depth and size trained the recipe's way
    tag: str = ""


def prefix_by_hours(kept: Path, hours: float, out: Path) -> tuple[Path, float, int]:
    """The first chunks of ``kept`` (in lecture order) up to ``hours`` of audio: (manifest, hours, chunks)."""
    rows = sorted(read_manifest(kept), key=lambda r: (r.audio, r.extra["start"]))
    chosen, total = [], 0.0
    for row in rows:
        length = row.extra["end"] - row.extra["start"]
        if chosen and total + length > hours * 3600:
            break
        chosen.append({"audio": str(row.path(kept)), **row.extra})
        total += length
    write_manifest(out, chosen)
    return out, total / 3600, len(chosen)


def depth_student(teacher: Path, start: Path, out: Path, layers: int) -> list[int]:
    """``layers`` of the teacher's decoder layers, maximally spaced (stage 4's rule), under ``start``'s encoder
    (distilled, frozen): any depth up to the teacher's, whatever depth ``start`` itself kept."""
    from safetensors.torch import load_file, save_file

    from k2d_train.stages.s4_student import build_student

    if not (out / "model.safetensors").exists():
        shape = json.loads((start / "config.json").read_text())
        full = json.loads((teacher / "config.json").read_text())
        kept, _, _ = build_student(teacher, out, layers, shape["encoder_layers"] if shape["encoder_layers"] <
                                   full["encoder_layers"] else None, shape["encoder_ffn_dim"] / full["encoder_ffn_dim"])
        weights = load_file(out / "model.safetensors")
        weights.update({k: v for k, v in load_file(start / "model.safetensors").items() if k.startswith("model.encoder.")})
        save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    else:
        kept = json.loads((out / "k2d_student.json").read_text())["kept_layers"]
    if (start / POLICY_FILE).exists():
        (out / POLICY_FILE).write_bytes((start / POLICY_FILE).read_bytes())
    return kept


def _steps(chunks: int, batch: int, options: CurveOptions) -> int:
    return max(options.min_steps, min(options.max_steps, math.ceil(options.epochs * chunks / batch)))


def train_point(config: RunConfig, registry, start: Path, kept: Path, chunks: int, folder: Path,
                options: CurveOptions, say, *, layers: int) -> dict:
    """One (depth, size) student: distilled, registered as ``<name>-d<L>-<H>h`` and exported for serving."""
    from k2d_train.pipeline.stage_bodies import register_and_export
    from k2d_train.stages.s6_distill import distill

    name = f"{config.name}-{folder.name}"
    teacher = registry.path_of(hf_name(config.teacher))
    kept_layers = depth_student(teacher, start, folder / "init", layers)
    batch = options.batch_size or config.distill.batch_size
    steps = _steps(chunks, batch, options)
    distill_options = replace(config.distill, max_steps=steps, teacher_topk=options.topk, kl_states="student",
                              batch_size=batch, learning_rate=options.learning_rate or config.distill.learning_rate,
                              warmup_steps=min(config.distill.warmup_steps, steps // 10),
                              eval_every=options.eval_every or max(steps // 4, 1), save_every=max(steps // 4, 1))
    final = registry.folder(name, "hf")
    started = time.perf_counter()
    report = distill(teacher, folder / "init", kept, folder / "distill", distill_options, dev=_dev(config),
                     resume=True, final_dir=final, teacher_ct2=registry.path_of(config.teacher), shared=_shared(folder))
    seconds = time.perf_counter() - started
    entry = register_and_export(config, registry, name, final, kept_layers, f"k2d-curve:{config.source}")
    return _record(entry, steps, chunks, seconds, report, say, layers=layers, kept_layers=kept_layers,
                   **({"kl": "full"} if options.topk == 0 else {}), **({"tag": options.tag} if options.tag else {}))


def train_head_point(config: RunConfig, registry, start: Path, kept: Path, chunks: int, folder: Path,
                     options: CurveOptions, say, *, head: str) -> dict:
    """One (head, size) non-autoregressive student on the same frozen encoder (stage 7's training and export,
    the recipe's ``distill_ctc`` options or their defaults), registered as ``<name>-<head>-<H>h``."""
    from k2d_train.pipeline.options import CTCOptions
    from k2d_train.stages.s7_distill_ctc import distill_ctc
    from k2d_train.store.onnx_export import publish_ctc_student

    base = replace(config.distill_ctc or CTCOptions(), head=head)
    steps = _steps(chunks, base.batch_size, options)
    ctc = replace(base, max_steps=steps, warmup_steps=min(base.warmup_steps, steps // 10),
                  eval_every=max(steps // 4, 1), save_every=max(steps // 4, 1))
    started = time.perf_counter()
    report = distill_ctc(start, kept, folder / "run", ctc, dev=_dev(config), out_dir=folder / "final",
                         shared=_shared(folder))
    seconds = time.perf_counter() - started
    teacher = registry.get(config.teacher).family or config.teacher
    entry = publish_ctc_student(registry, f"{config.name}-{folder.name}", folder / "final", ctc.quantization,
                                config.pseudo_label.language or "zh", teacher, f"k2d-curve:{config.source}")
    return _record(entry, steps, chunks, seconds, report, say, layers=0, head=head, kept_layers=[],
                   **({"tag": options.tag} if options.tag else {}))


def _shared(folder: Path) -> Path:
    """What every point shares, all on one frozen encoder: its states of the chunks, the teacher's top-k targets
    per size (computed once per curve, not once per depth and head)."""
    return folder.parent / "shared"


def _dev(config: RunConfig) -> Path | None:
    """The out-of-domain dev set that picks each point's kept step (None when the corpus has none)."""
    dev = config.run_dir / "corpus" / "dev_ood.jsonl"
    return dev if dev.exists() else None


def _record(entry, steps: int, chunks: int, seconds: float, report: dict, say, **kind) -> dict:
    """A trained point as the table and plot read it, its training time said as it is recorded."""
    rate = steps / max(seconds, 1e-9)
    say(f"{entry.name}: {steps} steps in {seconds / 60:.1f} min ({rate:.2f} steps/s), "
        f"{entry.parameters / 1e6:.1f}M parameters")
    return {"model": entry.name, **kind, "steps": steps, "chunks": chunks, "train_seconds": round(seconds, 1),
            "steps_per_s": round(rate, 3), "parameters": entry.parameters, "best": report.get("best")}


def finished_point(folder: Path, train) -> dict:
    """A point trained once: its record (training time included) is kept in ``point.json`` and reused, so a
    rerun that adds sizes or heads neither retrains it nor reports the seconds of a no-op resume."""
    record = folder / "point.json"
    if record.exists():
        return json.loads(record.read_text())
    point = train()
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(point, indent=2))
    return point


def curve(config: RunConfig, registry, out: Path, options: CurveOptions, say=print) -> dict:
    """Every (depth, size) student, then one comparison of them all with both teachers."""
    from k2d_train.experiments.compare import Contender, compare
    from k2d_train.pipeline.stage_bodies import export_teacher

    run_dir = config.run_dir
    start = run_dir / "student-encoder"
    if not start.is_dir():
        raise FileNotFoundError(f"{start}: run `k2d run {config.source} --to-stage 5` first (the distilled encoder)")
    # the earlier runs, read first: a bad file fails now, not after hours of training, and before ``out`` is rewritten
    runs = [json.loads(Path(path).read_text()) for path in options.earlier]
    points = []
    full = "-kl" if options.topk == 0 else ""  # full-KL points are points of their own (own folder, name, line)
    kinds = [(f"d{layers}{full}", partial(train_point, layers=layers)) for layers in options.layers] + \
        [(head, partial(train_head_point, head=head)) for head in options.heads]
    for hours in options.hours:
        kept, real_hours, chunks = prefix_by_hours(run_dir / "validate" / "kept.jsonl", hours,
                                                   run_dir / f"curve-{hours:g}h.jsonl")
        for kind, train in kinds:
            folder = run_dir / "curve" / (f"{kind}-{hours:g}h" + (f"-{options.tag}" if options.tag else ""))
            if folder.name not in options.skip:
                point = finished_point(folder, partial(train, config, registry, start, kept, chunks, folder, options,
                                                       say))
                points.append({**point, "hours": round(real_hours, 3)})
    teacher = export_teacher(config, registry)
    context = ContextPolicy.of_model(start)
    contenders = [Contender("teacher", teacher),
                  Contender.short_context_teacher(teacher, context),
                  *(Contender(p_label(p), p["model"]) for p in points)]
    sets = {name: run_dir / "corpus" / f"{name}.jsonl" for name in options.sets}
    sets = {name: path for name, path in sets.items() if path.exists()}
    rows = compare(contenders, sets, config.evaluate, registry.store, say)
    result = merged([*runs, {"points": points, "rows": rows, "options": asdict(options),
                             "config": str(config.source)}])
    write_report(result, out)
    return result


def write_report(result: dict, out: Path) -> None:
    """``curve.json``, ``README.md`` (each run's table under the command that made it) and ``curve.png``."""
    from k2d_train.experiments.compare import markdown

    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    (out / "README.md").write_text("\n".join(markdown(run["rows"], command(run)) + "\n" + points_markdown(run["points"])
                                             for run in result["runs"]))
    plot(result, out / "curve.png")


def command(run: dict) -> str:
    """A run as a reader types it: the recipe from its ``configs/`` folder, whatever checkout ran it, and the
    options that tell one recipe's runs apart."""
    recipe, options = run["config"], run.get("options", {})
    recipe = "configs/" + recipe.split("/configs/", 1)[1] if "/configs/" in recipe else recipe
    words = [f"k2d curve {recipe}", *(f"--layers {n}" for n in options.get("layers", [])),
             *(f"--hours {h:g}" for h in options.get("hours", [])), *(f"--head {h}" for h in options.get("heads", []))]
    # the steps a point trained decide its figures too; a run recorded before an option existed had its default
    defaults = {key: getattr(CurveOptions, key) for key in ("epochs", "max_steps", "topk", "learning_rate", "batch_size")}
    words += [f"--{key.replace('_', '-')} {options[key]:g}" for key, default in defaults.items()
              if options.get(key, default) != default]
    if options.get("tag"):
        words.append(f"--tag {options['tag']}")
    return " ".join(words)


def merged(results: list[dict]) -> dict:
    """Curve runs of one recipe family drawn as one curve (e.g. scale-1h.yaml's 0.3 h and 1 h sizes with
    scale.yaml's 3 h, whose pseudo-labels only it has): every run is kept whole under ``runs`` (its rows, and the
    intervals it computed against its own teachers); ``points`` and ``rows`` are their union. A run is known by
    the students it trained, not by its recipe (one recipe trains a depth per run): a later run that trains a
    student again takes it, with its rows, from the earlier run, which goes when nothing is left of it; the
    teachers' rows (same models, same sets) are kept once."""
    runs: list[dict] = []
    for result in results:
        for later in result.get("runs", [result]):
            again = {p_label(p) for p in later["points"]}
            runs = [left for run in runs if (left := _without(run, again))["points"]]
            runs.append({key: later[key] for key in ("points", "rows", "options", "config")})
    points = [{**p, "config": run["config"]} for run in runs for p in run["points"]]
    rows: dict[tuple, dict] = {}
    for run in runs:
        for row in run["rows"]:
            if "model" in row and "set" in row:  # not the run's peak-memory line
                rows.setdefault((row["model"], row["set"]), row)
    return {"points": points, "rows": list(rows.values()), "runs": runs}


def _without(run: dict, labels: set[str]) -> dict:
    """``run`` less the students named by ``labels`` (their points and rows)."""
    return {**run, "points": [p for p in run["points"] if p_label(p) not in labels],
            "rows": [r for r in run["rows"] if r.get("model") not in labels]}


def points_markdown(points: list[dict]) -> str:
    lines = ["| student | decoder layers (teacher's) | hours | chunks | steps | train min | steps/s | parameters |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        depth = f"{p['head']} head{variant(p)}" if p.get("head") else f"{p['layers']} ({p['kept_layers']}){variant(p)}"
        lines.append(f"| {p['model']} | {depth} | {p['hours']:.2f} | {p['chunks']} | "
                     f"{p['steps']} | {p['train_seconds'] / 60:.1f} | {p['steps_per_s']:.2f} | "
                     f"{p['parameters'] / 1e6:.1f}M |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """MER against hours per depth, one panel per set, the teacher (30 s and short context) as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("set")]
    sets = list(dict.fromkeys(r["set"] for r in rows))
    figure, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.6), squeeze=False)
    by_label = {p_label(p): p for p in result["points"]}
    for axis, set_name in zip(axes[0], sets, strict=True):
        here = {r["model"]: r for r in rows if r["set"] == set_name}
        for label, style in (("teacher", "k-"), ("teacher, short context", "k--")):
            if label in here:
                axis.axhline(here[label]["mer"], color="k", linestyle=style[1:], label=label)
        for kind in sorted({series(p) for p in result["points"]}):
            mine = sorted((p for label, p in by_label.items() if series(p) == kind and label in here),
                          key=lambda p: p["hours"])
            if not mine:
                continue
            mers = [here[p_label(p)]["mer"] for p in mine]
            lows = [here[p_label(p)].get("vs_baseline", {}).get("low", 0) for p in mine]
            highs = [here[p_label(p)].get("vs_baseline", {}).get("high", 0) for p in mine]
            base = here["teacher"]["mer"]
            axis.errorbar([p["hours"] for p in mine], mers,
                          yerr=[[max(m - (base + lo), 0) for m, lo in zip(mers, lows, strict=True)],
                                [max(base + hi - m, 0) for m, hi in zip(mers, highs, strict=True)]],
                          marker="o", capsize=3, label=kind)
        axis.set_xscale("log")
        hours = sorted({p["hours"] for p in result["points"]})
        axis.set_xticks(hours, [f"{h:.2g}" for h in hours])  # the sizes themselves, not 3×10⁻¹ over 4×10⁻¹
        axis.minorticks_off()
        axis.set_title(set_name)
        axis.set_xlabel("hours of pseudo-labelled audio")
        axis.set_ylabel("MER")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def series(point: dict) -> str:
    """The line a point belongs to on the plot: its decoder depth, or its non-autoregressive head."""
    if point.get("head"):
        return f"{point['head']} head{variant(point)}"
    return f"{point['layers']}-layer decoder{variant(point)}"


def p_label(point: dict) -> str:
    if point.get("head"):
        return f"{point['head'].upper()}{variant(point)}, {point['hours']:.2g} h"
    return f"{point['layers']}L{variant(point).replace(',', '', 1)}, {point['hours']:.2g} h"


def variant(point: dict) -> str:
    """What sets a point apart from its depth's recipe: the full KL, or the tag of a recipe variant."""
    return (", full KL" if point.get("kl") == "full" else "") + (f", {point['tag']}" if point.get("tag") else "")


__all__ = ["CurveOptions", "curve", "prefix_by_hours"]
