"""Output units of a CTC / transducer student: Mandarin characters and a small English subword vocabulary.

Code-switching speech needs both scripts: every Mandarin character is a unit (the student cannot loop on
a character the way a Whisper decoder loops on a phrase, and there is no word segmentation to learn),
English words are cut into sentencepiece pieces (``▁`` marks a word's first piece). Unit 0 is the CTC
blank. The inventory is saved with the model (``units.json``); turning ids back into text needs nothing
but this file, so the serving side stays free of sentencepiece and torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from k2d.textunits import is_han

UNITS_FILE = "units.json"
BLANK = "<blk>"
WORD_START = "▁"


@dataclass(frozen=True)
class Units:
    symbols: tuple[str, ...]  # index = unit id; 0 is the blank

    @property
    def blank(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.symbols)

    def text(self, ids: list[int]) -> str:
        """Unit ids (blanks and repeats already removed) → text: characters joined, English pieces joined into
        words, a space wherever the script changes (Whisper's own spacing: ``我们用 gradient descent 来训练``)."""
        out, previous_han = "", None
        for index in ids:
            symbol = self.symbols[index]
            if index == self.blank or not symbol:
                continue
            han = is_han(symbol[0])
            starts_word = symbol.startswith(WORD_START)
            piece = symbol.removeprefix(WORD_START)
            if out and (starts_word and not han or (previous_han is not None and han != previous_han)):
                out += " "
            out += piece
            previous_han = han
        return " ".join(out.split())

    def save(self, folder: Path) -> None:
        (folder / UNITS_FILE).write_text(json.dumps({"blank": BLANK, "units": list(self.symbols)},
                                                    ensure_ascii=False, indent=0) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> Units:
        raw = json.loads((Path(folder) / UNITS_FILE).read_text(encoding="utf-8"))
        if raw["units"][0] != BLANK:
            raise ValueError(f"{folder / UNITS_FILE}: unit 0 must be the blank {BLANK}")
        return cls(tuple(raw["units"]))
