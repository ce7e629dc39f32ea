"""The model store's registry: which models exist locally, in which form, for which role.

Deliberately free of torch/transformers: the serving app reads it too, and the serving image
stays slim. ``k2d_train`` writes entries; ``app`` only reads them. The file is
``<store>/registry.json``; paths inside it are relative to the store so the folder can be moved
or mounted into a container.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

from filelock import FileLock

from k2d.atomic import SHARED_FILE_MODE, atomic_write_text
from k2d.guard import RepetitionPenalty

Format = Literal["ctranslate2", "transformers", "onnx"]
Engine = str  # a kind with a factory in k2d.engine_contract: whisper, ctc, transducer, or one registered
Role = Literal["teacher", "validator", "student"]

REGISTRY_FILE = "registry.json"


def default_store() -> Path:
    """``$K2D_MODELS_DIR`` or ``./models``: the same default for the CLI, the server and Docker."""
    return Path(os.environ.get("K2D_MODELS_DIR", "models")).resolve()


class InvalidNameError(ValueError):
    """A model name that cannot be a folder of the store (separators, ``..``, absolute, hidden)."""


MAX_NAME_CHARS = 128


def check_name(name: str, what: str = "model name") -> str:
    """The one rule for every name that becomes a path in the store (``<store>/<name>/...``): a single,
    visible path component — no ``/`` or ``\\``, not ``.``/``..`` or any name starting with a dot, not
    absolute, no control characters, at most 128 characters. Returns the name; InvalidNameError otherwise."""
    problem = None
    if not isinstance(name, str) or not name:
        problem = "it is empty"
    elif len(name) > MAX_NAME_CHARS:
        problem = f"it is longer than {MAX_NAME_CHARS} characters"
    elif name.startswith(("/", "\\")) or name[1:2] == ":":
        problem = "it is an absolute path"
    elif "/" in name or "\\" in name:
        problem = "it contains a path separator ('/' or '\\')"
    elif name.startswith("."):
        problem = "it starts with '.' (no '..', no hidden folders)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "it contains a control character"
    if problem:
        raise InvalidNameError(f"invalid {what} {name!r}: {problem}; use one folder name such as 'my-student'")
    return name


def inside(path: Path, root: Path) -> bool:
    """True when ``path`` (symlinks resolved) is ``root`` itself or below it."""
    return path.resolve().is_relative_to(root.resolve())


class UnknownModelError(KeyError):
    """A model name that the registry does not hold; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class Serving:
    """How a model must be served — the contract its training wrote and that the server, ``k2d evaluate``
    and :func:`k2d.load` all honour, so what was measured is what users get."""

    teacher: str | None = None  # the family it was distilled from: served behind it for loops
    default_language: str | None = None  # a zh-en student decodes zh unless the request says otherwise
    repetition_penalty: float = 1.0  # on tokens already generated, for windows up to the limit below
    repetition_penalty_max_s: float = 15.0
    engine: Engine = "whisper"  # what runs it: the Whisper engine, or ONNX Runtime for a CTC/transducer head

    @property
    def penalty(self) -> RepetitionPenalty:
        return RepetitionPenalty(self.repetition_penalty, self.repetition_penalty_max_s)


_SERVING_KEYS = {f.name for f in fields(Serving)}


@dataclass
class ModelEntry:
    name: str
    format: Format
    path: str
    role: Role | None = None
    parameters: int | None = None
    languages: list[str] = field(default_factory=list)
    quantization: str | None = None
    source: str | None = None
    family: str | None = None
    serving: Serving = field(default_factory=Serving)
    card: dict = field(default_factory=dict)  # the model card of a trained student (k2d_card.json)
    extra: dict = field(default_factory=dict)  # descriptive only: nothing serves by it

    def __post_init__(self):
        if isinstance(self.serving, dict):
            self.serving = Serving(**self.serving)

    @classmethod
    def from_json(cls, item: dict) -> ModelEntry:
        """An entry as stored; registries written before the typed contract kept it in ``extra``."""
        item = dict(item)
        extra = dict(item.pop("extra", None) or {})
        serving = {**{k: extra.pop(k) for k in list(extra) if k in _SERVING_KEYS}, **(item.pop("serving", None) or {})}
        card = item.pop("card", None) or extra.pop("card", None) or {}
        if "teacher" not in serving and card.get("teacher"):
            serving["teacher"] = card["teacher"]
        return cls(**item, serving=Serving(**serving), card=card, extra=extra)

    def resolve(self, store: Path) -> Path:
        path = Path(self.path)
        return path if path.is_absolute() else store / path

    @property
    def multilingual(self) -> bool:
        return len(self.languages) > 1

    @property
    def repetition_penalty(self) -> RepetitionPenalty:
        """The decoding penalty this model is served with (recorded at export; 1.0: none)."""
        return self.serving.penalty


class Registry:
    """Load, query and update ``registry.json``.

    Several processes write one store (``k2d models fetch`` beside a ``k2d run`` that registers its student, two
    curves): every change re-reads the file under a lock and writes it atomically, so no writer drops the
    entries another added since it loaded; a name not known yet is looked up again on disk before it is an error."""

    def __init__(self, store: Path | None = None):
        self.store = (store or default_store()).resolve()
        self.file = self.store / REGISTRY_FILE
        self._entries = self._load()

    def _load(self) -> dict[str, ModelEntry]:
        if not self.file.exists():
            return {}
        raw = json.loads(self.file.read_text(encoding="utf-8"))
        return {item["name"]: ModelEntry.from_json(item) for item in raw.get("models", [])}

    def entries(self) -> list[ModelEntry]:
        return sorted(self._entries.values(), key=lambda e: e.name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> ModelEntry:
        if name not in self._entries:
            self._entries = self._load()  # another process may have registered it since this one loaded
        if name not in self._entries:
            known = ", ".join(self.names()) or "none (run `k2d models fetch`)"
            raise UnknownModelError(f"unknown model {name!r}; known models: {known}")
        return self._entries[name]

    def by_role(self, role: Role, format: Format = "ctranslate2") -> list[ModelEntry]:
        return [e for e in self.entries() if e.role == role and e.format == format]

    def path_of(self, name: str) -> Path:
        return self.get(name).resolve(self.store)

    def folder(self, name: str, *parts: str) -> Path:
        """``<store>/<name>/<parts>``, for a checked name; never a path outside the store."""
        path = self.store.joinpath(check_name(name), *parts)
        if not inside(path, self.store) or path.resolve() == self.store:
            raise InvalidNameError(f"invalid model name {name!r}: {path} is not inside the store {self.store}")
        return path

    def add(self, entry: ModelEntry) -> None:
        check_name(entry.name)
        self._change(lambda entries: entries.__setitem__(entry.name, entry))

    def remove(self, name: str) -> None:
        self._change(lambda entries: entries.pop(name, None))

    def save(self) -> None:
        """Rewrite the file as it stands, readable by the serving user (repairs an older 0600 file)."""
        self._change(lambda entries: None)

    def _change(self, change: Callable[[dict[str, ModelEntry]], object]) -> None:
        """Re-read, change and rewrite the file under the store's lock: a read-modify-write no other writer
        interleaves with (the lock file sits beside the registry, shared like it)."""
        self.store.mkdir(parents=True, exist_ok=True)
        with FileLock(self.file.with_name(REGISTRY_FILE + ".lock"), mode=SHARED_FILE_MODE):
            self._entries = self._load()
            change(self._entries)
            payload = {"models": [asdict(e) for e in self.entries()]}
            atomic_write_text(self.file, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


ROLE_ALIASES = ("student", "teacher")


def resolve_alias(requested: str | None, roles: dict[str, str | None], preferred: str | None = None) -> str | None:
    """The model a role alias (``student``/``teacher``) stands for among ``roles`` (name → role): the one place
    the server, the Python API and evaluation resolve it. A real model name wins over an alias; among several
    models of the role, ``preferred`` (the server's default) when it is one, else the first by name."""
    if requested not in ROLE_ALIASES or requested in roles:
        return requested
    named = sorted(name for name, role in roles.items() if role == requested)
    if not named:
        raise UnknownModelError(f"no {requested} model is available; models: {', '.join(sorted(roles)) or 'none'}")
    return preferred if preferred in named else named[0]


def resolve_model(name_or_path: str, store: Path | None = None) -> tuple[Path, ModelEntry | None]:
    """Accept a registered name, a role alias (``student``: the servable student) or a directory path; return
    the directory and its entry if any."""
    registry = Registry(store)
    if name_or_path in ROLE_ALIASES and name_or_path not in registry and not Path(name_or_path).is_dir():
        servable = {e.name: e.role for e in registry.entries()
                    if e.format != "transformers" and e.resolve(registry.store).is_dir()}
        name_or_path = resolve_alias(name_or_path, servable)
    if name_or_path in registry:
        entry = registry.get(name_or_path)
        return entry.resolve(registry.store), entry
    path = Path(name_or_path)
    if path.is_dir():
        return path.resolve(), None
    registry.get(name_or_path)  # raises UnknownModelError with the list of known names
    raise AssertionError("unreachable")


def teacher_of(registry: Registry, student: ModelEntry) -> str | None:
    """The CTranslate2 teacher a student was distilled from, same quantisation first (like with like)."""
    family = student.serving.teacher
    if not family:
        return None
    quant = student.quantization or "int8"
    for name in (f"{family}-{quant.replace('_', '-')}", family):
        if name in registry and registry.path_of(name).is_dir() and registry.get(name).format == "ctranslate2":
            return name
    return None
