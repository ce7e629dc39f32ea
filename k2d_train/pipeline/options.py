"""Every stage's options, in one torch-free module: what a ``k2d run`` recipe's sections may say.

The stages import their options from here, so loading a recipe, listing the stages and fingerprinting
them (``k2d run --list-stages``) never imports torch or transformers. One class per recipe section; the
defaults and the comments written here are the only ones: they are validated by pydantic (an unknown key
or a bad value fails with its YAML path) and ``docs/recipe.md`` is generated from them (``k2d settings
--recipe``, a test keeps the two equal).
"""

from __future__ import annotations

from dataclasses import field, fields, replace
from typing import TYPE_CHECKING

from pydantic import ConfigDict, TypeAdapter
from pydantic.dataclasses import dataclass as pydantic_dataclass

from k2d.context import ContextPolicy
from k2d.policy import DecodePolicy
from k2d.streaming import StreamWindows

dataclass = pydantic_dataclass(config=ConfigDict(extra="forbid"))  # options validated as they are made

if TYPE_CHECKING:
    from k2d.served import Runtime

TEACHER_ONLY = ("none", "ngram")  # rules that judge the teacher's text alone: no validator decoding
ADAPT = ("full", "norms", "lora")
HEADS = ("ctc", "transducer")

@dataclass
class PseudoLabelOptions:
    language: str | None = "zh"  # the teacher decodes in this language (null: detect)
    beam_size: int = 5  # the teacher's beam
    batch_size: int = 8  # chunks per teacher batch
    nbest: int = 1  # hypotheses kept per chunk (N-best KD needs >= 2)
    max_chunk_s: float = 30.0  # longest chunk (Whisper's 30 s)
    min_chunk_s: float | None = 8.0  # each chunk draws its length limit from [min, max]: served windows vary too
    edge_s: float = 0.2  # margin around each chunk so tight timestamps do not clip a phoneme
    seed: int = 0  # random seed of this stage (batch order, draws)
    dataset_split: str = "train"  # for a Hugging Face dataset source
    audio_column: str = "audio"  # for a Hugging Face dataset source
    device: str = "cpu"  # cpu | cuda (`k2d run --device` sets it)
    compute_type: str = "int8"  # CTranslate2 compute type
    cpu_threads: int = 0  # intra-op threads (0: CTranslate2's default)
    # run folders (relative to the recipe) whose labels of the same audio files, made with this same teacher and
    # options, are taken as they are instead of decoded again (a larger prefix of a corpus after a smaller one)
    reuse: list[str] = field(default_factory=list)



@dataclass
class ValidateOptions:
    rule: str = "comp"  # the filter: none | ngram | mer | per | comp (K²D's)
    alpha: float = 0.4  # the rule's threshold (drop a chunk above it)
    ngram_n: int = 3  # ngram rule: n-gram length
    ngram_count: int = 3  # ngram rule: repeats that drop a chunk
    beam_size: int = 1  # the validator's beam
    batch_size: int = 8  # segments per validator batch
    edge_s: float = 0.15  # margin around each segment for the validator
    device: str = "cpu"  # cpu | cuda (`k2d run --device` sets it)
    compute_type: str = "int8"  # CTranslate2 compute type
    also_rules: tuple[str, ...] = ()  # rules to measure besides ``rule`` (ablations): they may need the validator

    @property
    def needs_validator(self) -> bool:
        return bool({self.rule, *self.also_rules} - set(TEACHER_ONLY))



@dataclass
class EncoderDistillOptions:
    max_steps: int = 200  # optimizer steps of this stage
    batch_size: int = 4  # examples per batch
    learning_rate: float = 5e-5  # peak learning rate (linear warm-up, then linear decay to 0)
    warmup_steps: int = 20  # steps of linear warm-up
    pad_min_s: float = 0.5  # training margins cover the serving policy's range (pad .. pad + bucket)
    pad_max_s: float = 4.5  # largest training margin after the audio
    serve_pad_s: float = 2.0  # served margin: audio + pad
    serve_bucket_s: float = 2.0  # served lengths round up to this
    # longest served window; 30 s by default: cutting long speech into ≤ 12 s windows made the demo student
    # worse on minute-long out-of-domain audio (MER 0.550 vs 0.414, docs/benchmarks/long-audio-cpu)
    serve_max_window_s: float = 30.0
    target_layers: list[int] = field(default_factory=list)  # 1-based student layers → same-depth teacher layers
    l1_weight: float = 1.0  # L1 on the final states
    cos_weight: float = 1.0  # cosine distance on the final states
    contrastive_weight: float = 0.1  # frame contrastive term
    contrastive_temperature: float = 0.1  # its temperature
    extra_teachers: list[str] = field(default_factory=list)  # transformers dirs or store names (e.g. whisper-tiny.en-hf)
    extra_weight: float = 0.5  # weight of the extra teachers' terms
    spec_augment: bool = True  # SpecAugment on the student's input
    max_crop_s: float | None = 12.0  # train on the first ≤ N s of each chunk: short inputs are the point, and cheaper
    train_top_layers: int | None = None  # train only the top N encoder layers (the rest run without autograd)
    # what short-context adaptation may change, the rest staying the teacher's (Whisper's generality):
    # full (every weight) | norms (layer norms + position table) | lora (low-rank adapters on attention and FFN
    # + norms + positions, merged into the weights at the end)
    adapt: str = "full"
    lora_rank: int = 8  # adapter rank (adapt: lora)
    # also keep the student's states on the teacher's own 30 s input: every N-th step the batch runs at 30 s too,
    # regressed to the teacher's states of all 1,500 frames with this weight (0: off)
    full_context_weight: float = 0.0
    full_context_every: int = 4  # see full_context_weight
    # noise (and room) on the student's input only, with this probability per clip; targets stay the teacher's
    # states of the clean clip, so the student learns to hear through it
    augment_p: float = 0.0
    augment_snr_db: tuple[float, float] = (5.0, 25.0)  # SNR range of that noise
    extra_audio: str | None = None  # unlabelled manifest {audio, start, end, id} heard by this stage only
    # at most this many chunks, evenly spread over the kept ones (None: all): each needs the teacher's 30 s states,
    # the dearest pass on a CPU, and 80 steps of 4 read 320 chunks however many hours the corpus holds
    max_chunks: int | None = None
    save_every: int = 50  # checkpoint every N steps (resume point)
    keep_checkpoints: int = 2  # checkpoints kept on disk
    stop_after_steps: int | None = None  # pause after this many steps in one invocation (pre-emptible jobs)
    seed: int = 0  # random seed of this stage (batch order, draws)
    cache: bool = True  # cache the teacher's states on disk

    def __post_init__(self):
        if self.adapt not in ADAPT:
            raise ValueError(f"distill_encoder.adapt {self.adapt!r}: choose one of {', '.join(ADAPT)}")
        if self.adapt != "full" and self.train_top_layers:
            raise ValueError("distill_encoder: train_top_layers and adapt are two answers to one question; set one")
        self.augment_snr_db = tuple(self.augment_snr_db)

    @property
    def policy(self) -> ContextPolicy:
        """What serving must honour: the trained margin (and, if set, a shorter longest window)."""
        return ContextPolicy(self.serve_pad_s, self.serve_bucket_s, self.serve_max_window_s)



@dataclass
class DistillOptions:
    ce_weight: float = 0.8  # cross-entropy on the pseudo-labels (K²D: 0.8)
    kl_weight: float = 1.0  # KL to the teacher (K²D: 1.0)
    temperature: float = 2.0  # KL temperature (K²D: 2)
    learning_rate: float = 1e-4  # peak learning rate (linear warm-up, then linear decay to 0)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_steps: int = 20  # steps of linear warm-up
    max_steps: int = 200  # optimizer steps of this stage
    batch_size: int = 4  # examples per batch
    grad_accum: int = 1  # batches per optimizer step
    save_every: int = 50  # checkpoint every N steps (resume point)
    eval_every: int = 50  # dev evaluation every N steps (0: never)
    keep_checkpoints: int = 2  # checkpoints kept on disk
    seed: int = 0  # random seed of this stage (batch order, draws)
    use_nbest: bool = False  # train on every N-best hypothesis (needs pseudo_label.nbest)
    label_script: str = "simplified"  # simplified | traditional | as_is (the teacher flips between scripts)
    # auto: bf16 on CUDA, none on CPU; bf16 also runs on a CPU (autocast, float32 weights), fast where it is native
    # (avx512_bf16 / AMX): docs/training.md, "Cheap steps on a CPU"
    mixed_precision: str = "auto"
    # keep the decoder's token embedding (tied to its output projection: 26.5M of a 2-layer base decoder's 35.2M
    # trainable weights) as the teacher's: no gradient for the 51,865-row product, no optimizer state for it
    freeze_embeddings: bool = False
    # against memorising a few hours (2.45 h: 39k label tokens for the 8.6M weights of a 2-layer decoder besides
    # its embedding; the training CE falls to ~0.1): Whisper's dropout on the decoder while training (it ships 0),
    # and SpecAugment masks drawn anew each step on the student's cached states (targets: the clean states')
    dropout: float = 0.0
    mask_time: int = 0  # time masks per example, up to 20 frames (0.4 s) each
    mask_channels: int = 0  # channel masks per example, up to width / 16 channels each
    cache_encoder: bool = True  # cache encoder states on disk
    dev_limit: int = 40  # dev utterances scored at each evaluation
    loop_weight: float = 1.0  # the kept step minimises guarded dev MER + loop_weight × looping share (DevScore)
    stop_after_steps: int | None = None  # pause after this many steps in one invocation (pre-emptible jobs)
    # which encoder states the teacher's decoder reads for the KL term: "teacher" (its own 30 s states, the paper)
    # or "student" (the student's short-context states: no 30 s encoder pass at all, k2d_train/training/teacher_targets.py)
    kl_states: str = "teacher"
    # > 0: the teacher's top-k distributions computed once per example and cached; each step is then student-only
    teacher_topk: int = 0



@dataclass
class CTCOptions:
    head: str = "ctc"  # ctc | transducer (stateless predictor + joiner)
    hidden: int = 768  # head width
    joint: int = 320  # transducer: joiner width
    context: int = 2  # transducer: units the stateless predictor sees
    english_vocab: int = 256  # English word pieces in the unit set
    max_steps: int = 800  # optimizer steps of this stage
    batch_size: int = 8  # examples per batch
    learning_rate: float = 1e-3  # peak learning rate (linear warm-up, then linear decay to 0)
    warmup_steps: int = 50  # steps of linear warm-up
    mask_time: int = 2  # SpecAugment-style masks on the (cached) encoder states
    mask_channels: int = 2  # channel masks
    eval_every: int = 100  # dev evaluation every N steps (0: never)
    save_every: int = 100  # checkpoint every N steps (resume point)
    dev_limit: int = 40  # dev utterances scored at each evaluation
    keep_checkpoints: int = 2  # checkpoints kept on disk
    stop_after_steps: int | None = None  # pause after this many steps in one invocation (pre-emptible jobs)
    seed: int = 0  # random seed of this stage (batch order, draws)
    streaming: bool = False  # train on chunked frames so it can transcribe live
    chunk_s: float = 0.64  # streaming chunk
    left_s: float = 1.28  # streaming left context
    label_script: str = "simplified"  # simplified | traditional | as_is
    quantization: str = "int8"  # the ONNX export: int8 (dynamic quantisation) | float32
    # the head's own input: audio + pad_s rounded up to bucket_s (None: the encoder's policy). A CTC head needs no
    # room for a decoder to look past the speech, so a tighter margin costs nothing and saves encoder time
    pad_s: float | None = None
    bucket_s: float | None = None  # see pad_s

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"distill_ctc.head {self.head!r}: choose {' or '.join(HEADS)}")

    def policy(self, encoder_policy: ContextPolicy) -> ContextPolicy:
        return replace(encoder_policy, pad_s=self.pad_s if self.pad_s is not None else encoder_policy.pad_s,
                       bucket_s=self.bucket_s if self.bucket_s is not None else encoder_policy.bucket_s)

    @property
    def windows(self) -> StreamWindows | None:
        return StreamWindows(self.chunk_s, self.left_s) if self.streaming else None



@dataclass
class EvaluateOptions:
    """Where and how ``k2d evaluate`` / ``compare`` / stage 8 decode: a runtime and the serving DecodePolicy.
    A config's ``evaluate:`` section may name DecodePolicy fields (``beam_size``, ``teacher_sampling``...)
    directly beside these."""

    language: str | None = None  # decode in this language (null: the model's own, or the manifest row's)
    use_manifest_language: bool = True  # a row's "language" wins over the model's default when --language is unset
    device: str = "cpu"  # cpu | cuda (`k2d evaluate --device`, `k2d run --device`)
    compute_type: str = "int8"  # CTranslate2 compute type, as served
    cpu_threads: int = 0  # intra-op threads of the encoding instance (0: CTranslate2's default)
    decode_threads: int = 1  # the server's default (K2D_CPU_DECODE_THREADS)
    time_encoder: bool = True  # also time each model's encoder alone per utterance (compare's "encoder ms")
    policy: DecodePolicy = field(default_factory=DecodePolicy)

    @classmethod
    def from_section(cls, section: dict | None) -> EvaluateOptions:
        """A config's ``evaluate:`` mapping; DecodePolicy's fields go to the policy, unknown keys are refused."""
        section = dict(section or {})
        own = {f.name for f in fields(cls)} - {"policy"}
        policy_keys = {f.name for f in fields(DecodePolicy)}
        unknown = sorted(set(section) - own - policy_keys)
        if unknown:
            raise ValueError(f"config [evaluate]: unknown keys {unknown}; known: {sorted(own | policy_keys)}")
        policy = TypeAdapter(DecodePolicy).validate_python({k: section.pop(k) for k in list(section) if k in policy_keys})
        return cls(**section, policy=policy)

    def runtime(self) -> Runtime:
        from k2d.served import Runtime

        return Runtime(self.device, compute_type_cpu=self.compute_type, compute_type_cuda=self.compute_type,
                       cpu_threads=self.cpu_threads, decode_threads=self.decode_threads)



@dataclass
class StudentShape:
    decoder_layers: int = 2  # decoder layers kept from the teacher, maximally spaced (first and last kept)
    encoder_layers: int | None = None  # fewer encoder layers (needs distill_encoder)
    encoder_ffn_ratio: float = 1.0  # thinner encoder FFN (needs distill_encoder)


@dataclass
class ExportOptions:
    quantization: str = "int8"  # int8 | int8_float16 | float16 | float32 (CTranslate2)
    repetition_penalty: float = 1.0  # the student's decoding penalty, served from its registry entry
    # serve the student with only the output tokens its training labels use (plus bytes and special tokens): with
    # a 2-layer decoder the 51,865-row output projection is most of a decoding step (k2d models trim); the full
    # export stays registered as <name>-full-vocabulary
    trim_vocabulary: bool = False
    trim_english_words: bool = False  # keep 3,607 common English words too (k2d models trim --english-words)
