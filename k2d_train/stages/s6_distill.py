"""``k2d distill``: train the student's decoder on the kept chunks with CE on pseudo labels + KL to the teacher.

The student's encoder is frozen here (the teacher's own, or the short-context encoder that
``k2d distill-encoder`` trained), so its outputs are cached once per chunk; the teacher's decoder
reads the teacher's own 30 s encoder states for the KL term. Labels are the teacher's own token
ids per segment with timestamp tokens, in one script (``label_script``). The kept student is the
checkpoint with the best guarded dev MER and fewest loops on the *out-of-domain* dev set
(``DevScore``), not the last step. Runs under
Accelerate (``accelerate launch -m k2d_cli distill ...``); checkpoints are whole directories
renamed into place, and the data order is a function of (seed, epoch), so ``--resume`` continues
exactly where the last checkpoint stopped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from k2d.context import FULL_FRAMES, ContextPolicy
from k2d.engine import MAX_POSITIONS
from k2d.manifest import read_manifest
from k2d.scoring import ErrorCounts, mer_counts, to_script
from k2d_train.labels.decoding import whisper_prompt
from k2d_train.labels.tokens import chunk_label_ids
from k2d_train.pipeline.options import DistillOptions
from k2d_train.pipeline.sharding import Processes
from k2d_train.training.augment import mask_states
from k2d_train.training.encoder_states import (
    STUDENT_STATES,
    CT2Encoder,
    EncoderStates,
    encoder_digest,
    span_key,
    student_identity,
    teacher_identity,
)
from k2d_train.training.hf_decode import greedy_decode
from k2d_train.training.loop import fit, make_accelerator
from k2d_train.training.losses import LossWeights, distillation_loss
from k2d_train.training.teacher_targets import TopK, TopKCache, compute_topk, fingerprint


@dataclass
class Example:
    key: str
    audio: Path
    start: float
    end: float
    tokens: list[int]
    prompt_len: int


def build_examples(kept: Path, tokenizer, use_nbest: bool, script: str = "simplified") -> list[Example]:
    """One example per kept chunk (its timestamped label), plus one per distinct N-best hypothesis.

    The hypotheses come from a separate beam search over the chunk (``k2d pseudo-label --nbest``), so even
    the first may differ from the long-form label; each is put in the labels' script, and a hypothesis
    that repeats one already taken adds nothing."""
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    examples = []
    for row in read_manifest(kept):
        prompt = whisper_prompt(tokenizer, row.extra.get("language") or "zh")
        labels = [chunk_label_ids(row.extra, tokenizer, script)]
        if use_nbest:
            labels += [tokenizer.encode(to_script(text, script), add_special_tokens=False)
                       for text in row.extra.get("nbest", [])]
        for label in dict.fromkeys(tuple(label) for label in labels if label):  # N-best share the chunk's states
            tokens = [*prompt, *label, eot]
            examples.append(Example(row.extra["id"], row.path(kept), row.extra["start"], row.extra["end"],
                                    tokens[:MAX_POSITIONS], len(prompt)))
    return examples


@dataclass(frozen=True)
class Item:
    """One training example as the loader hands it over: both encoders' states (float16 in memory), its
    tokens, and the teacher's cached top-k targets when the teacher is not run per step."""

    student: torch.Tensor
    teacher: torch.Tensor
    tokens: list[int]
    prompt_len: int
    topk: TopK | None = None


def collate(items: list[Item], pad: int) -> dict[str, torch.Tensor]:
    """Teacher-forcing tensors; the mask covers real label tokens only (not prompt, not padding). Cached top-k
    rows are concatenated in mask order (row-major), the order ``logits[mask]`` selects them in."""
    longest = max(len(item.tokens) for item in items)
    seqs = torch.full((len(items), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(items), longest - 1), dtype=torch.bool)
    for i, item in enumerate(items):
        seqs[i, : len(item.tokens)] = torch.tensor(item.tokens)
        mask[i, item.prompt_len - 1 : len(item.tokens) - 1] = True
    batch = {"student_encoder": torch.stack([item.student.float() for item in items]),
             "inputs": seqs[:, :-1], "labels": seqs[:, 1:], "mask": mask}
    if items[0].topk is None:
        batch["teacher_encoder"] = torch.stack([item.teacher.float() for item in items])
    else:
        batch["topk_logprobs"] = torch.cat([item.topk.logprobs for item in items])
        batch["topk_indices"] = torch.cat([item.topk.indices for item in items])
    return batch


@dataclass(frozen=True)
class DevScore:
    """A checkpoint's dev result, read the way the server would return it.

    Raw greedy MER is dominated by the few rows that loop to the token budget (1.5-3.7 on the fuller
    recipe at every eval), so choosing by it picks whichever step looped least *verbosely*. The server
    cuts or re-decodes a loop, and every loop costs a teacher fallback, so the kept checkpoint is the one
    with the lowest ``guarded`` MER (loops cut back as the server cuts them) plus ``loop_weight`` for
    each looping row's share of the set."""

    mer: float  # raw greedy MER, loops included
    guarded: float  # MER with each flagged loop cut back to one occurrence of what it repeats
    loops: int
    rows: int

    def selection(self, loop_weight: float) -> float:
        return self.guarded + loop_weight * self.loops / max(self.rows, 1)


def dev_score(student, states: EncoderStates, dev: Path, tokenizer, limit: int, device) -> DevScore:
    """Greedy decoding of a labelled dev manifest through the student's own context, guarded.

    Rows of one feature length decode as a batch, each with the serving guard's token budget (one
    token past it reveals a loop), so a looping early checkpoint costs what it would cost the server,
    not 448 tokens per row."""
    from k2d.guard import LOOP_REASONS, GuardOptions, check, collapse_repeats

    guard = GuardOptions()
    rows = list(read_manifest(dev))[:limit]
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
    for index, row in enumerate(rows):
        hidden = states.get(row.path(dev), 0.0, 1e9, f"dev-{dev.stem}-{index}")["final"]
        groups.setdefault((hidden.shape[0], row.extra.get("language") or "zh"), []).append((index, hidden))
    raw, guarded, loops = ErrorCounts(), ErrorCounts(), 0
    student.eval()
    for (frames, language), members in groups.items():
        budget = guard.budget(frames * 0.02) + 1
        hidden = torch.stack([h for _, h in members]).to(device)
        decoded = greedy_decode(student, hidden, whisper_prompt(tokenizer, language), eot, max_new_tokens=budget)
        for (index, _), ids in zip(members, decoded, strict=True):
            text, reference = tokenizer.decode(ids, skip_special_tokens=True), rows[index].text or ""
            looped = check(text, len(ids), 0.0, budget, guard) in LOOP_REASONS
            loops += looped
            raw = raw + mer_counts(reference, text)
            guarded = guarded + mer_counts(reference, collapse_repeats(text) if looped else text)
    student.train()
    return DevScore(raw.rate, guarded.rate, loops, len(rows))


def same_encoder(student, teacher) -> bool:
    """Whether the student still has its teacher's encoder, weight for weight (K²D's frozen encoder)."""
    ours, theirs = student.model.encoder.state_dict(), teacher.model.encoder.state_dict()
    return ours.keys() == theirs.keys() and all(
        ours[n].shape == theirs[n].shape and torch.equal(ours[n], theirs[n].to(ours[n].device)) for n in ours)


def _encoder_states(teacher, student, student_dir: Path, teacher_dir: Path, run_dir: Path, options: DistillOptions,
                    device, policy: ContextPolicy, teacher_cache: Path | None = None, teacher_ct2: Path | None = None,
                    single: bool = True, shared: Path | None = None):
    """The teacher's 30 s states (by CTranslate2 when its export is given: same states, less CPU), and the
    student's own (short context, or a distilled or reshaped encoder) if they differ, in ``shared`` when given
    (keyed by the encoder alone, so every student on it reuses them)."""
    folder = teacher_cache or run_dir / "encoder_cache"
    encoder = CT2Encoder(teacher_ct2, device.type) if teacher_ct2 is not None else teacher.model.encoder
    full = EncoderStates(encoder, folder if options.cache_encoder else None, device, lambda _: FULL_FRAMES,
                         identity=teacher_identity(teacher_dir))
    if policy.full and same_encoder(student, teacher):
        return full, full
    digest, own_encoder, home = encoder_digest(student.model.encoder), student.model.encoder, shared or run_dir
    if teacher_ct2 is not None and options.cache_encoder and single:  # CTranslate2 here too (one converter at a time)
        own_encoder = CT2Encoder(_ct2_copy(student_dir, home / f"student-ct2-{digest}"), device.type)
    own = EncoderStates(own_encoder, home / STUDENT_STATES if options.cache_encoder else None,
                        device, policy.frames, identity=student_identity(digest, policy))
    return full, own


def _ct2_copy(student_dir: Path, out: Path) -> Path:
    """A float32 CTranslate2 copy of a frozen student, for its encoder states (same values as transformers' to
    ~1e-3, at a fraction of the CPU time: hours of audio are encoded once per run)."""
    if not (out / "model.bin").exists():
        from k2d_train.store.convert import transformers_to_ct2

        transformers_to_ct2(student_dir, out, "float32")
    return out


def distill(teacher_dir: Path, student_dir: Path, kept: Path, run_dir: Path, options: DistillOptions,
            dev: Path | None = None, resume: bool = True, final_dir: Path | None = None,
            report_dev: list[Path] | None = None, teacher_cache: Path | None = None,
            teacher_ct2: Path | None = None, shared: Path | None = None) -> dict:
    """Train; write checkpoints under ``run_dir`` and the best (by ``dev``, see ``DevScore``) student to ``final_dir``.
    ``shared``: a folder for what depends on the frozen encoder alone (its states, the teacher's top-k targets on
    them), so students of other depths on the same encoder and chunks compute neither again."""
    from transformers import WhisperForConditionalGeneration, WhisperTokenizer

    accelerator = make_accelerator(options)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = WhisperTokenizer.from_pretrained(student_dir)
    teacher = WhisperForConditionalGeneration.from_pretrained(teacher_dir).to(accelerator.device).eval()
    student = WhisperForConditionalGeneration.from_pretrained(student_dir, dropout=options.dropout)
    student.model.encoder.requires_grad_(False)
    if options.freeze_embeddings:  # the output projection is the same tensor (Whisper ties them)
        student.get_input_embeddings().requires_grad_(False)
    policy = ContextPolicy.of_model(student_dir)
    teacher_states, student_states = _encoder_states(teacher, student, student_dir, teacher_dir, run_dir, options,
                                                     accelerator.device, policy, teacher_cache, teacher_ct2,
                                                     accelerator.num_processes == 1, shared)
    examples = build_examples(kept, tokenizer, options.use_nbest, options.label_script)
    if not examples:
        raise ValueError(f"{kept}: no kept chunks to train on (loosen the validation rule or α)")
    if options.kl_states == "student":
        teacher_states = student_states
    processes = Processes.current()
    if options.cache_encoder and processes.distributed:  # each process fills its share of the caches
        chunks = list({ex.key: ex for ex in examples}.values())
        processes.share(chunks, lambda ex: _states_of([ex], student_states, teacher_states, True), "encoder outputs")
    with accelerator.main_process_first():  # the main process fills what is left (top-k targets); the others read
        hidden = _states_of(examples, student_states, teacher_states, not accelerator.is_main_process)
        topk = _teacher_topk(teacher, examples, hidden, teacher_dir, teacher_states, run_dir, options,
                             accelerator.device, not accelerator.is_main_process, shared)
    if topk is not None:
        teacher = None  # every step is student-only from here
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    items = [Item(*hidden[ex.key], ex.tokens, ex.prompt_len, topk[i] if topk else None) for i, ex in enumerate(examples)]
    weights = LossWeights(options.ce_weight, options.kl_weight, options.temperature)
    best = _Best(run_dir / "best", student_dir)

    def loss(modules, batch, step, generator):
        return _step_loss(modules[0], teacher, augmented(batch, options, generator), weights, accelerator.device)

    def evaluate(modules, step, record):
        model = accelerator.unwrap_model(modules[0])
        best.offer(model, step, _dev_scores(model, student_states, [dev, *(report_dev or [])], tokenizer, options,
                                            accelerator.device, record), options.loop_weight)
        return f"step {step}: " + ", ".join(f"{k} {v:g}" for k, v in record.items() if "dev" in k)

    fitted = fit(accelerator, [student], [p for p in student.parameters() if p.requires_grad], items,
                 [hidden[ex.key][0].shape[0] for ex in examples], lambda b: collate(b, pad), loss, options, run_dir,
                 "distill", resume, evaluate if dev is not None else None)
    report = {"steps": fitted.step, "examples": len(examples), "last": fitted.last, "options": asdict(options),
              "seconds": fitted.seconds, "best": best.summary(), "context": policy.describe()}
    if accelerator.is_main_process:
        if final_dir is not None and fitted.finished:
            _save_final(accelerator.unwrap_model(fitted.modules[0]), student_dir, final_dir, best)
        (run_dir / "distill_report.json").write_text(json.dumps(report, indent=2))
    return report


def augmented(batch: dict, options: DistillOptions, generator: torch.Generator) -> dict:
    """The batch a step trains on: SpecAugment masks (``mask_time``, ``mask_channels``) on the student's states
    alone; the teacher's states and cached targets stay those of the clean audio."""
    if not (options.mask_time or options.mask_channels):
        return batch
    return {**batch, "student_encoder": mask_states(batch["student_encoder"], generator, options.mask_time,
                                                    options.mask_channels)}


def _step_loss(student, teacher, batch: dict, weights: LossWeights, device) -> dict:
    """One batch's losses: the teacher's logits on its own 30 s states (or its cached top-k), the student's on its own."""
    batch = {name: value.to(device) for name, value in batch.items()}
    teacher_logits, topk = None, None
    if "topk_indices" in batch:
        topk = (batch["topk_logprobs"], batch["topk_indices"])
    else:
        with torch.no_grad():
            teacher_logits = teacher(encoder_outputs=(batch["teacher_encoder"],),
                                     decoder_input_ids=batch["inputs"]).logits
    logits = student(encoder_outputs=(batch["student_encoder"],), decoder_input_ids=batch["inputs"]).logits
    return distillation_loss(logits, teacher_logits, batch["labels"], batch["mask"], weights, topk)


def _states_of(examples: list[Example], student_states: EncoderStates, teacher_states: EncoderStates,
               quiet: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(student's, teacher's) encoder states of every chunk, once per chunk (N-best labels share them), kept
    in float16 (the cache's own precision: nothing is lost, and hours of audio fit in memory)."""
    hidden: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for ex in tqdm(examples, desc="encoder outputs", disable=quiet):
        if ex.key not in hidden:
            t = teacher_states.get(ex.audio, ex.start, ex.end, ex.key)["final"].half()
            s = t if student_states is teacher_states else student_states.get(ex.audio, ex.start, ex.end, ex.key)["final"].half()
            hidden[ex.key] = (s, t)
    return hidden


def _teacher_topk(teacher, examples: list[Example], hidden: dict, teacher_dir: Path, teacher_states: EncoderStates,
                  run_dir: Path, options: DistillOptions, device, quiet: bool,
                  shared: Path | None = None) -> list[TopK] | None:
    """The teacher's top-k targets of every example, from the cache when it was made for exactly these
    examples, teacher, states and temperature (``k2d_train/training/teacher_targets.py``); None when not asked for.
    In ``shared``, one file per fingerprint: each size of a learning curve keeps its own."""
    if options.teacher_topk <= 0 or options.kl_weight == 0:
        return None
    key = fingerprint(teacher_identity(teacher_dir), teacher_states.identity,
                      [span_key(ex.audio, ex.start, ex.end) for ex in examples],
                      [ex.tokens for ex in examples], options.teacher_topk, options.temperature)
    cache = TopKCache(shared / f"teacher_topk-{key}.npz" if shared else run_dir / "teacher_topk.npz", key)
    targets = cache.load()
    if targets is None:
        targets = compute_topk(teacher, examples, lambda ex: hidden[ex.key][1], options.teacher_topk,
                               options.temperature, options.batch_size, device, quiet)
        if not quiet:
            cache.save(targets)
    return targets


def _dev_scores(model, states: EncoderStates, sets: list[Path], tokenizer, options: DistillOptions, device,
                log: dict) -> DevScore:
    """Every dev set's score into ``log`` (the first without a suffix); the first one's, which picks the step."""
    scores = [dev_score(model, states, path, tokenizer, options.dev_limit, device) for path in sets]
    for index, (path, found) in enumerate(zip(sets, scores, strict=True)):
        suffix = "" if index == 0 else f"_{path.stem}"
        log.update({f"dev_mer{suffix}": round(found.mer, 4), f"dev_guarded{suffix}": round(found.guarded, 4),
                    f"dev_loops{suffix}": found.loops})
    return scores[0]


class _Best:
    """The weights of the step with the best dev selection score so far (saved, not kept in memory)."""

    def __init__(self, folder: Path, student_dir: Path):
        self.folder, self.student_dir = folder, student_dir
        marker = folder / "k2d_best.json"
        self.state = json.loads(marker.read_text()) if marker.exists() else None

    def offer(self, model, step: int, score: DevScore, loop_weight: float) -> None:
        selection = round(score.selection(loop_weight), 4)
        if self.state is not None and selection >= self.state.get("selection", self.state["dev_mer"]):
            return
        from k2d_train.store.publish import write_student

        self.state = {"step": step, "selection": selection, "dev_mer": round(score.mer, 4),
                      "dev_guarded": round(score.guarded, 4), "dev_loops": score.loops, "dev_rows": score.rows}
        write_student(model, self.student_dir, self.folder, extra={"k2d_best.json": json.dumps(self.state)})

    def summary(self) -> dict | None:
        return self.state


def _save_final(student, student_dir: Path, final_dir: Path, best: _Best) -> None:
    from k2d_train.store.publish import copy_dir, write_student

    if best.state is not None:
        copy_dir(best.folder, final_dir)
    else:
        write_student(student, student_dir, final_dir)
