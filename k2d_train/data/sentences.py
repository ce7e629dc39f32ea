"""Lecture-style Mandarin-English sentences for the synthetic code-switching corpus.

Taiwanese university lectures (the paper's COOLTEST/NTUML setting) speak Mandarin with English
technical terms. Each frame below is a sentence a lecturer says, with one slot for a term; the
bank pairs frames and terms deterministically so every sentence is distinct, and adds sentences
with no slot (pure Mandarin, or two terms). Characters are traditional, as Whisper writes them.
"""

from __future__ import annotations

import random

TERMS = [
    "gradient descent", "learning rate", "loss function", "batch size", "overfitting", "dropout",
    "attention", "transformer", "encoder", "decoder", "embedding", "softmax", "cross entropy",
    "backpropagation", "optimizer", "weight decay", "training set", "validation set", "test set",
    "feature", "label", "model", "dataset", "GPU", "token", "beam search", "language model",
    "fine tune", "pretrain", "benchmark", "baseline", "regularization", "activation function",
    "hidden layer", "convolution", "kernel", "pooling", "recurrent network", "sequence", "vector",
    "matrix", "probability", "distribution", "sampling", "inference", "latency", "throughput",
    "memory", "checkpoint", "epoch",
]

FRAMES = [
    "我們今天要講的是{t}",
    "這個{t}非常重要",
    "大家要注意{t}的設定",
    "接下來我們看一下{t}",
    "如果{t}太大的話結果會不好",
    "所以我們需要一個好的{t}",
    "這裡的{t}是怎麼算出來的",
    "你可以把{t}想成一個函數",
    "上一堂課我們講過{t}",
    "下一步我們來調整{t}",
    "很多同學會問{t}是什麼",
    "其實{t}沒有那麼難",
    "我們用{t}來解決這個問題",
    "在實驗裡面{t}影響很大",
    "老師建議大家先試試看{t}",
    "這篇論文提出了新的{t}",
    "你看這個圖上面的{t}",
    "我們先不要管{t}",
    "作業二會用到{t}",
    "今天的重點就是{t}",
    "請大家回去複習{t}",
    "這個{t}的效果比較好",
    "為什麼要用{t}呢",
    "我們把{t}畫出來看看",
    "有了{t}以後就可以開始訓練",
    "期中考一定會考{t}",
    "最後我們再講一次{t}",
    "這邊的{t}要小心處理",
    "同學如果不懂{t}可以來問我",
    "我們來比較兩種不同的{t}",
    "{t}是這個方法的核心",
    "先用一個簡單的{t}當作例子",
    "這個地方的{t}寫錯了",
    "我們發現{t}會一直變小",
    "你要先算出{t}才能往下做",
    "這就是為什麼我們需要{t}",
]

PLAIN = [
    "好我們開始上課",
    "大家有沒有問題",
    "我們休息十分鐘",
    "今天就講到這裡",
    "下課以前我們做一個小練習",
    "請大家打開上次的投影片",
    "這個問題我們下次再討論",
    "我們來看一個例子",
    "這是一個很常見的問題",
    "大家可以先想一想",
    "這一題的答案是什麼",
    "我們先從最簡單的情況開始",
]

PAIRS = [
    "{a}跟{b}有什麼不一樣",
    "我們先講{a}再講{b}",
    "用{a}的時候也要注意{b}",
]


def sentence_bank(seed: int = 0) -> list[str]:
    """All distinct sentences, in a deterministic order (≥ 300)."""
    rng = random.Random(seed)
    sentences = list(PLAIN)
    terms = list(TERMS)
    for i, frame in enumerate(FRAMES):
        rng.shuffle(terms)
        sentences += [frame.format(t=t) for t in terms[: 8 + i % 3]]
    for frame in PAIRS:
        for a, b in zip(TERMS[0::2], TERMS[1::2], strict=True):
            sentences.append(frame.format(a=a, b=b))
    unique = list(dict.fromkeys(sentences))
    rng.shuffle(unique)
    return unique


def split_bank(seed: int, test: int, dev: int) -> tuple[list[str], list[str], list[str]]:
    """Disjoint (test, dev, lecture) sentence lists: no test sentence is ever spoken in a lecture."""
    bank = sentence_bank(seed)
    if test + dev >= len(bank):
        raise ValueError(f"the bank has {len(bank)} sentences; test + dev must leave some for lectures")
    return bank[:test], bank[test : test + dev], bank[test + dev :]
