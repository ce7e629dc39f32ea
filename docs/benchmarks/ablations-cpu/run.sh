#!/usr/bin/env bash
# The ablation runs, one after another (2 CPU cores: about 1.5 h without the commented-out ones). The base run is the demo recipe with tiny.en
# as validator and stage 10 (the decoder again on each other rule's chunks); each variant links the base run's
# finished stages it does not change and runs from the first stage it does, up to the export (stage 8).
# Then: the compare of contenders.yaml (see README.md).
set -euo pipefail
cd "$(dirname "$0")/../../.."
K2D=.venv/bin/k2d
CONFIGS=docs/benchmarks/ablations-cpu/configs
BASE=runs/abl
$K2D run $CONFIGS/base.yaml

variant() {  # variant NAME FIRST_STAGE SHARED_DIR...
  local name=$1 first=$2 dir=runs/abl-$1
  shift 2
  mkdir -p "$dir/stages"
  for shared in "$@"; do ln -sfn "$(realpath $BASE/$shared)" "$dir/$shared"; done
  cp "$BASE"/stages/*.json "$dir/stages/"  # --from-stage forgets FIRST_STAGE and later; the earlier ones are reused
  $K2D run "$CONFIGS/$name.yaml" --from-stage "$first" --to-stage 8
}
variant nocontrast 5 corpus pseudo validate student-init teacher_states
variant nbest 2 corpus teacher_states
variant fullctx 5 corpus pseudo validate student-init teacher_states
variant extrateacher 5 corpus pseudo validate student-init teacher_states
# deep-and-thin vs shallow encoders: configs here, not in the measured table
# variant deepthin 4 corpus pseudo validate teacher_states
# variant shallow 4 corpus pseudo validate teacher_states

# All of them side by side, models interleaved utterance by utterance, per voice group
C=runs/abl/corpus
K2D_MODELS_DIR=${K2D_MODELS_DIR:-models} $K2D compare --contenders docs/benchmarks/ablations-cpu/contenders.yaml \
  --manifest test=$C/test.jsonl --manifest test_ood=$C/test_ood.jsonl --manifest test_ood_noisy=$C/test_ood_noisy.jsonl \
  --manifest test_ood_clear=$C/test_ood_clear.jsonl --language zh --out docs/benchmarks/ablations-cpu/compare
