"""Mandarin-English sentences for the synthetic code-switching corpus: in-domain and out-of-domain.

In-domain: Taiwanese university lectures (the paper's COOLTEST/NTUML setting) speak Mandarin with
English machine-learning terms. Each frame is a sentence a lecturer says, with one slot for a term;
the bank pairs frames and terms deterministically so every sentence is distinct, and adds sentences
with no slot (pure Mandarin, or two terms). Characters are traditional, as Whisper writes them.

Out-of-domain (``OOD_*``): office, software-team and daily-life talk with its own frames, its own
English terms and its own plain sentences, sharing no frame, no term and no English word with the
in-domain bank, so the OOD sets test language the student never trained on. Every OOD syllable was
recorded by gcin-voice speaker 5 (who lacks 42 syllables: 星/行/性 xing, 運/雲 yun, 女, 綠, 弄, 則 ...),
so that held-out voice reads them without borrowing a training speaker's recordings; only the
neutral-tone 嗎 and 們 take speaker 5's full-tone ma/men.
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
    """All distinct in-domain sentences, in a deterministic order (≥ 300)."""
    return _bank(PLAIN, FRAMES, PAIRS, TERMS, seed)


OOD_TERMS = [
    "pull request", "code review", "commit", "merge conflict", "bug", "deadline", "meeting", "email",
    "server", "database", "deploy", "release", "API", "spreadsheet", "slides", "weekend", "coffee",
    "lunch", "party", "budget", "report", "customer", "manager", "interview", "offer", "password",
    "laptop", "update", "shopping", "delivery", "menu", "online", "schedule", "project", "demo",
    "feedback", "startup", "app", "cloud", "login", "dashboard", "sprint", "invoice", "parking",
]

OOD_FRAMES = [
    "明天的{t}改到下午三點",
    "你可以幫我看一下這個{t}嗎",
    "老闆說{t}一定要今天做完",
    "我剛剛把{t}寄給你了",
    "這個{t}到底是誰在管的",
    "我們晚上再聊{t}吧",
    "不好意思我忘記{t}了",
    "你那邊的{t}好了沒有",
    "等一下開會的時候記得帶{t}",
    "我覺得這個{t}有點奇怪",
    "先把{t}處理好再說",
    "昨天的{t}大家都看過了嗎",
    "他每天都在抱怨{t}",
    "我的{t}好像壞掉了",
    "麻煩你把{t}改一下",
    "我們公司最近換了新的{t}",
    "這禮拜的{t}比較多",
    "你有收到我的{t}嗎",
    "下班以前要把{t}交出去",
    "客戶對這個{t}不太滿意",
    "那個{t}我等一下再回你",
    "可以先跟我說{t}在哪裡嗎",
    "我今天沒空處理{t}",
    "你們那邊的{t}順利嗎",
    "幫我確認一下{t}對不對",
    "因為{t}的關係我們晚了一個小時",
    "早上的{t}取消了",
    "我媽媽也開始用{t}了",
]

OOD_PLAIN = [
    "你吃過午餐了嗎",
    "我們明天早上九點見",
    "今天外面好冷喔",
    "我先去買一杯咖啡",
    "麻煩你把門關起來",
    "這家餐廳的東西很好吃",
    "我等一下要去接小孩",
    "今天的工作終於做完了",
    "你覺得這個價錢合理嗎",
    "我們改天再約吧",
    "路上開車小心",
    "這個週末我想在家休息",
]

OOD_PAIRS = [
    "{a}和{b}哪一個比較急",
    "你先處理{a}然後再看{b}",
    "{a}做完了可是{b}還沒",
]


def _bank(plain: list[str], frames: list[str], pairs: list[str], terms: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    sentences = list(plain)
    pool = list(terms)
    for i, frame in enumerate(frames):
        rng.shuffle(pool)
        sentences += [frame.format(t=t) for t in pool[: 8 + i % 3]]
    for frame in pairs:
        for a, b in zip(terms[0::2], terms[1::2], strict=True):
            sentences.append(frame.format(a=a, b=b))
    unique = list(dict.fromkeys(sentences))
    rng.shuffle(unique)
    return unique


def ood_sentence_bank(seed: int = 0) -> list[str]:
    """All distinct out-of-domain sentences, in a deterministic order (≥ 250)."""
    return _bank(OOD_PLAIN, OOD_FRAMES, OOD_PAIRS, OOD_TERMS, seed)


# Plain Mandarin, spoken only in test_ood_clear (held-out clear voices): where the teacher is at its best
# (CER ~5-8 % on clear neural voices), a student that is worse cannot hide behind code-switching errors.
CLEAR_PLAIN = [
    "我昨天晚上很晚才回到家", "這條路平常不會這麼塞", "你要不要一起去吃晚飯", "我把鑰匙放在桌子上了",
    "他說下個月要搬到南部", "這件衣服的顏色我很喜歡", "等一下記得打電話給媽媽", "今天的天氣比昨天好多了",
    "我們搭捷運過去比較快", "這本書我已經看了兩次", "你的手機好像一直在響", "樓下的便利商店關門了",
    "我每天早上都會去公園走路", "這個問題我們明天再談", "他的聲音聽起來有點累", "桌上的水果是誰買的",
    "我們家的貓最喜歡睡覺", "下雨天我都不想出門", "你先坐一下我馬上回來", "這附近有沒有好吃的麵店",
    "我忘了帶傘所以全身都濕了", "他們兩個從小就認識", "這間房間看起來很乾淨", "我想把這張照片寄給你",
    "今天早上的公車來得很慢", "你可以把音樂關小聲一點嗎", "我們去年夏天去了日本", "這杯茶有點太燙了",
    "明天早上我要去看醫生", "這個地方我以前來過", "晚上的時候這裡很安靜", "你的字寫得比我好看",
    "我們下午三點在門口見面", "這道菜要多放一點鹽", "他每天都很早就起床", "我把垃圾拿出去丟了",
    "週末我們帶孩子去動物園", "這張椅子坐起來很舒服", "外面的風好像越來越大", "我剛才看到你的朋友了",
    "這台機器已經用了十年", "你喝咖啡要不要加牛奶", "我們的火車快要開了", "這家店的老闆人很好",
    "我最近每天都睡不太好", "今天晚上要不要看電影", "他把車停在學校旁邊", "這些花是我媽媽種的",
    "妹妹昨天買了一雙新鞋", "這條河的水非常清楚", "我們晚餐吃了很多青菜", "爺爺每天下午都去散步",
    "這座山上有很多大樹", "你明天幾點要出門上班", "她的頭髮剪短了很好看", "我們班上有三十個學生",
    "這碗湯喝起來有點鹹", "冬天的早上常常很冷", "他在圖書館找了一整天", "我想學怎麼做蛋糕",
    "這個週末我們去海邊玩", "姐姐送我一本筆記本", "你看窗外的月亮好圓", "這間餐廳的位子不多",
    "我每個月都會回家一次", "小狗在院子裡跑來跑去", "他們正在準備明天的考試", "這條街晚上有很多人",
    "請你把門輕輕關上", "我們一起去超市買東西", "這首歌我聽了好多遍", "他每天騎腳踏車上學",
    "奶奶做的餃子最好吃", "這雙襪子有點太小了", "我們坐在樹下聊天", "今天的功課我寫完了",
    "你喜歡吃甜的還是鹹的", "這棟大樓有二十層樓", "我弟弟很會畫畫", "早上的空氣特別新鮮",
    "我們排了很久的隊", "這個盒子裡面裝滿了書", "他打電話說會晚一點到", "下個星期我們要去旅行",
]


def clear_bank(seed: int = 0) -> list[str]:
    """The plain-Mandarin sentences of ``test_ood_clear``, in a deterministic order."""
    order = list(CLEAR_PLAIN)
    random.Random(seed + 101).shuffle(order)
    return order

