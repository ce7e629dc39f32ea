"""The languages Whisper's multilingual vocabulary has a ``<|xx|>`` token for (100 codes, in token order).

A fact of the model family, kept here rather than imported from a tokenizer library's private name: the
server refuses an unknown ``language`` with a 422 before any model sees it, and a model's own vocabulary
then says whether *it* knows that language (``engine.knows_language``).
"""

from __future__ import annotations

WHISPER_LANGUAGES: tuple[str, ...] = (
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id", "hi", "fi",
    "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg", "lt", "la", "mi", "ml",
    "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs",
    "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am",
    "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw",
    "ln", "ha", "ba", "jw", "su", "yue",
)
