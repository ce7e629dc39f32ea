"""The distilled short-context encoder under the teacher's own, untrained, six-layer decoder (a row of README.md)."""

from pathlib import Path

from transformers import WhisperForConditionalGeneration

from k2d_train.store.convert import transformers_to_ct2
from k2d_train.store.publish import write_student

RUN, OUT = Path("/tmp/exp/runs/base"), Path("/tmp/exp/enc-only-hf")
teacher = WhisperForConditionalGeneration.from_pretrained("/tmp/exp/models/whisper-base/hf")
distilled = WhisperForConditionalGeneration.from_pretrained(RUN / "student-encoder")
teacher.model.encoder.load_state_dict(distilled.model.encoder.state_dict())
write_student(teacher, RUN / "student-encoder", OUT)
teacher.config.save_pretrained(OUT)  # the teacher's config: all six decoder layers
transformers_to_ct2(OUT, Path("/tmp/exp/enc-only-ct2"), "int8")
