"""Copies of the experiment corpus's test manifests, the in-domain rows grouped by kind of training voice."""

import json
from pathlib import Path

from k2d_train.data.voices import voice

SOURCE, TARGET = Path("/tmp/exp/runs/base/corpus"), Path("/tmp/final/sets")
TARGET.mkdir(parents=True, exist_ok=True)
for name in ("test", "test_ood", "test_ood_noisy", "test_ood_clear"):
    rows = [json.loads(line) for line in (SOURCE / f"{name}.jsonl").read_text().splitlines()]
    for row in rows:
        row["audio"] = str((SOURCE / row["audio"]).resolve())
        if "_ood" not in name:
            row["group"] = f"{voice(row['voice'].split('+')[0]).engine} voices"
    (TARGET / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
