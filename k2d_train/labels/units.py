"""Build a CTC / transducer student's unit inventory from its pseudo-labels (``k2d.units`` reads it back).

Labels are put in one script first (as the decoder's labels are) and normalised the way MER scores them
(no punctuation, English lower-cased), so the units learn what is scored. English words are cut by a
small sentencepiece unigram model trained on the labels' English words alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from k2d.scoring import normalize, to_script
from k2d.textunits import is_han
from k2d.units import BLANK, Units

SPM_FILE = "english.model"


def label_words(text: str, script: str = "simplified") -> list[str]:
    """A label as scored: Mandarin characters and lower-case English words, in order."""
    return normalize(to_script(text, script)).split()


class UnitCoder:
    """Text → unit ids with the inventory and the English sentencepiece model that made it."""

    def __init__(self, units: Units, spm_file: Path | None):
        import sentencepiece

        self.units = units
        self.index = {symbol: i for i, symbol in enumerate(units.symbols)}
        self.spm = sentencepiece.SentencePieceProcessor(model_file=str(spm_file)) if spm_file else None

    def encode(self, text: str, script: str = "simplified") -> list[int]:
        ids = []
        for word in label_words(text, script):
            if is_han(word[0]):
                ids += [self.index[ch] for ch in word if ch in self.index]
            elif self.spm is not None:
                ids += [self.index[p] for p in self.spm.encode(word, out_type=str) if p in self.index]
        return ids


def build_units(texts: list[str], folder: Path, english_vocab: int = 256, script: str = "simplified") -> UnitCoder:
    """Every Mandarin character of the labels plus an English piece vocabulary; saved in ``folder``."""
    import sentencepiece

    folder.mkdir(parents=True, exist_ok=True)
    words = [w for text in texts for w in label_words(text, script)]
    chars = sorted({ch for w in words if is_han(w[0]) for ch in w})
    english = [w for w in words if not is_han(w[0])]
    pieces: list[str] = []
    spm_file = None
    if english:
        with tempfile.TemporaryDirectory() as scratch:
            corpus = Path(scratch) / "english.txt"
            corpus.write_text("\n".join(english) + "\n", encoding="utf-8")
            distinct_letters = len({c for w in english for c in w})
            vocab = max(distinct_letters + 4, min(english_vocab, 4 * len(set(english))))
            sentencepiece.SentencePieceTrainer.train(
                input=str(corpus), model_prefix=str(folder / "english"), vocab_size=vocab, model_type="unigram",
                character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, hard_vocab_limit=False,
                minloglevel=2)
        spm_file = folder / SPM_FILE
        processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_file))
        pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size()) if not processor.is_unknown(i)]
    units = Units((BLANK, *chars, *pieces))  # a bare "▁" piece stays: it is how a word break is spelled
    units.save(folder)
    return UnitCoder(units, spm_file)
