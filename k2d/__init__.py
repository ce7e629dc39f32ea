"""k2d: a distilled Whisper student for Mandarin-English speech, and the code that serves it.

    import k2d
    model = k2d.load("k2d-student")          # a registered name or a model folder
    result = model.transcribe("talk.flac")   # the server's path: VAD windows, loop guard, teacher fallback
    print(result.text, result.segments[0].start)

Heavy libraries load on first use: ``import k2d`` alone stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from k2d.policy import DecodePolicy
    from k2d.transcribe import Transcriber

__all__ = ["DecodePolicy", "load"]


def load(model: str = "k2d-student", store: str | Path | None = None, device: str = "auto",
         policy: DecodePolicy | None = None, teacher: bool = True, **runtime) -> Transcriber:
    """A served model as the server assembles it: its own context, guard and repetition penalty, and —
    for a student whose teacher is in the store — the teacher behind it for windows that loop
    (``teacher=False``: none). ``store``: the model store (default ``$K2D_MODELS_DIR`` or ``./models``);
    ``runtime``: :class:`k2d.served.Runtime` fields (``cpu_threads``, ``compute_type_cpu``, ...)."""
    from dataclasses import replace

    from k2d.policy import DecodePolicy
    from k2d.registry import default_store
    from k2d.served import Runtime, serve_one
    from k2d.transcribe import Transcriber

    policy = policy or DecodePolicy()
    if not teacher:
        policy = replace(policy, teacher_fallback=False)
    store = Path(store) if store is not None else default_store()
    return Transcriber(serve_one(model, store, policy, Runtime(device=device, **runtime)))


def __getattr__(name: str):
    if name == "DecodePolicy":
        from k2d.policy import DecodePolicy

        return DecodePolicy
    raise AttributeError(f"module 'k2d' has no attribute {name!r}")
