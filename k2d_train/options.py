"""Every stage's options, in one torch-free module: what a ``k2d run`` recipe's sections may say.

The stages import their options from here, so loading a recipe, listing the stages and fingerprinting
them (``k2d run --list-stages``) never imports torch or transformers. One class per recipe section; the
defaults written here are the only defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

from k2d.context import ContextPolicy
from k2d.policy import DecodePolicy
from k2d.streaming import StreamWindows

if TYPE_CHECKING:
    from k2d.served import Runtime

TEACHER_ONLY = ("none", "ngram")  # rules that judge the teacher's text alone: no validator decoding
ADAPT = ("full", "norms", "lora")
HEADS = ("ctc", "transducer")

@dataclass
class PseudoLabelOptions:
    language: str | None = "zh"
    beam_size: int = 5
    batch_size: int = 8
    nbest: int = 1
    max_chunk_s: float = 30.0
    min_chunk_s: float | None = 8.0  # each chunk draws its length limit from [min, max]: served windows vary too
    edge_s: float = 0.2  # margin around each chunk so tight timestamps do not clip a phoneme
    seed: int = 0
    dataset_split: str = "train"  # for a Hugging Face dataset source
    audio_column: str = "audio"
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 0



@dataclass
class ValidateOptions:
    rule: str = "comp"
    alpha: float = 0.4
    ngram_n: int = 3
    ngram_count: int = 3
    beam_size: int = 1
    batch_size: int = 8
    edge_s: float = 0.15  # margin around each segment for the validator
    device: str = "cpu"
    compute_type: str = "int8"
    also_rules: tuple[str, ...] = ()  # rules to measure besides ``rule`` (ablations): they may need the validator

    @property
    def needs_validator(self) -> bool:
        return bool({self.rule, *self.also_rules} - set(TEACHER_ONLY))



@dataclass
class EncoderDistillOptions:
    max_steps: int = 200
    batch_size: int = 4
    learning_rate: float = 5e-5
    warmup_steps: int = 20
    pad_min_s: float = 0.5  # training margins cover the serving policy's range (pad .. pad + bucket)
    pad_max_s: float = 4.5
    serve_pad_s: float = 2.0
    serve_bucket_s: float = 2.0
    # longest served window; 30 s by default: cutting long speech into ≤ 12 s windows made the demo student
    # worse on minute-long out-of-domain audio (MER 0.550 vs 0.414, docs/benchmarks/long-audio-cpu)
    serve_max_window_s: float = 30.0
    target_layers: list[int] = field(default_factory=list)  # 1-based student layers → same-depth teacher layers
    l1_weight: float = 1.0
    cos_weight: float = 1.0
    contrastive_weight: float = 0.1
    contrastive_temperature: float = 0.1
    extra_teachers: list[str] = field(default_factory=list)  # transformers dirs or store names (e.g. whisper-tiny.en-hf)
    extra_weight: float = 0.5
    spec_augment: bool = True
    max_crop_s: float | None = 12.0  # train on the first ≤ N s of each chunk: short inputs are the point, and cheaper
    train_top_layers: int | None = None  # train only the top N encoder layers (the rest run without autograd)
    # what short-context adaptation may change, the rest staying the teacher's (Whisper's generality):
    # full (every weight) | norms (layer norms + position table) | lora (low-rank adapters on attention and FFN
    # + norms + positions, merged into the weights at the end)
    adapt: str = "full"
    lora_rank: int = 8
    # also keep the student's states on the teacher's own 30 s input: every N-th step the batch runs at 30 s too,
    # regressed to the teacher's states of all 1,500 frames with this weight (0: off)
    full_context_weight: float = 0.0
    full_context_every: int = 4
    # noise (and room) on the student's input only, with this probability per clip; targets stay the teacher's
    # states of the clean clip, so the student learns to hear through it
    augment_p: float = 0.0
    augment_snr_db: tuple[float, float] = (5.0, 25.0)
    extra_audio: str | None = None  # unlabelled manifest {audio, start, end, id} heard by this stage only
    # at most this many chunks, evenly spread over the kept ones (None: all): each needs the teacher's 30 s states,
    # the dearest pass on a CPU, and 80 steps of 4 read 320 chunks however many hours the corpus holds
    max_chunks: int | None = None
    save_every: int = 50
    keep_checkpoints: int = 2
    stop_after_steps: int | None = None  # pause after this many steps in one invocation (pre-emptible jobs)
    seed: int = 0
    cache: bool = True

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
    ce_weight: float = 0.8
    kl_weight: float = 1.0
    temperature: float = 2.0
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20
    max_steps: int = 200
    batch_size: int = 4
    grad_accum: int = 1
    save_every: int = 50
    eval_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    use_nbest: bool = False
    label_script: str = "simplified"  # simplified | traditional | as_is (the teacher flips between scripts)
    mixed_precision: str = "auto"  # auto: bf16 on CUDA, none on CPU
    cache_encoder: bool = True
    dev_limit: int = 40
    loop_weight: float = 1.0  # the kept step minimises guarded dev MER + loop_weight × looping share (DevScore)
    stop_after_steps: int | None = None  # pause after this many steps in one invocation (pre-emptible jobs)
    # which encoder states the teacher's decoder reads for the KL term: "teacher" (its own 30 s states, the paper)
    # or "student" (the student's short-context states: no 30 s encoder pass at all, k2d_train/teacher_targets.py)
    kl_states: str = "teacher"
    # > 0: the teacher's top-k distributions computed once per example and cached; each step is then student-only
    teacher_topk: int = 0



@dataclass
class CTCOptions:
    head: str = "ctc"  # ctc | transducer (stateless predictor + joiner)
    hidden: int = 768
    joint: int = 320  # transducer: joiner width
    context: int = 2  # transducer: units the stateless predictor sees
    english_vocab: int = 256
    max_steps: int = 800
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    mask_time: int = 2  # SpecAugment-style masks on the (cached) encoder states
    mask_channels: int = 2
    eval_every: int = 100
    save_every: int = 100
    dev_limit: int = 40
    keep_checkpoints: int = 2
    stop_after_steps: int | None = None  # pause after this many steps in one invocation (pre-emptible jobs)
    seed: int = 0
    streaming: bool = False
    chunk_s: float = 0.64
    left_s: float = 1.28
    label_script: str = "simplified"
    quantization: str = "int8"  # the ONNX export: int8 (dynamic quantisation) | float32
    # the head's own input: audio + pad_s rounded up to bucket_s (None: the encoder's policy). A CTC head needs no
    # room for a decoder to look past the speech, so a tighter margin costs nothing and saves encoder time
    pad_s: float | None = None
    bucket_s: float | None = None

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

    language: str | None = None
    use_manifest_language: bool = True  # a row's "language" wins over the model's default when --language is unset
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 0
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
        policy = DecodePolicy(**{k: section.pop(k) for k in list(section) if k in policy_keys})
        return cls(**section, policy=policy)

    def runtime(self) -> Runtime:
        from k2d.served import Runtime

        return Runtime(self.device, compute_type_cpu=self.compute_type, compute_type_cuda=self.compute_type,
                       cpu_threads=self.cpu_threads, decode_threads=self.decode_threads)



@dataclass
class StudentShape:
    decoder_layers: int = 2
    encoder_layers: int | None = None  # fewer encoder layers (needs distill_encoder)
    encoder_ffn_ratio: float = 1.0  # thinner encoder FFN (needs distill_encoder)


@dataclass
class ExportOptions:
    quantization: str = "int8"
    repetition_penalty: float = 1.0  # the student's decoding penalty, served from its registry entry
