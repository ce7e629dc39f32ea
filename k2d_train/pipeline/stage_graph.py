"""The stages of ``k2d run`` as a graph that knows its inputs: what each stage reads, what it consumes, and
therefore exactly which results a change to the recipe makes stale.

A stage declares the recipe fields it reads (``reads``) and the earlier stages whose artifacts it consumes
(``inputs``). Its *fingerprint* hashes those fields' values and its inputs' fingerprints, so a change to one
field re-runs the stage that reads it and every stage downstream of that one, and nothing else (like make,
with the recipe as the sources). A stage also names the folders of the run it owns: they are cleared before
it re-runs for a change, so a resumable stage never resumes from partial outputs made with other settings.

This module imports no torch: ``k2d run --list-stages`` plans a run (which stages are done, stale, to run,
and why) in well under a second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from k2d.atomic import atomic_write_text

if TYPE_CHECKING:
    from k2d.registry import Registry
    from k2d_train.pipeline.config import RunConfig

Say = Callable[[str], None]

# what the pipeline adds to a stage's own result in its marker (a reader of the result leaves these out)
BOOKKEEPING = frozenset({"stage_seconds", "recipe", "fingerprint", "inputs", "touched"})
LOCATIONS = frozenset({"run_dir", "source"})  # where a run lives, not what it makes: never stale-making

# options that change how fast or where a stage runs, not what it makes: changing them re-runs nothing
RUNTIME_KNOBS = {
    "pseudo_label": {"device", "cpu_threads", "batch_size", "reuse"},
    "validate": {"device", "batch_size"},
    "distill_encoder": {"save_every", "keep_checkpoints", "stop_after_steps", "cache"},
    "distill": {"save_every", "keep_checkpoints", "stop_after_steps", "cache_encoder"},
    "distill_ctc": {"save_every", "keep_checkpoints", "stop_after_steps"},
    "evaluate": {"device", "cpu_threads", "decode_threads"},
}
# fields added to a section after runs were made, at the value that does what those runs did: left out of the
# recipe at that value, so upgrading re-runs nothing that was already done
ADDED_LATER = {
    "distill": {"freeze_embeddings": False, "dropout": 0.0, "mask_time": 0, "mask_channels": 0},
}


@dataclass
class Run:
    """What a stage gets: the recipe, the store, the corpus paths, and every earlier stage's result."""

    config: RunConfig
    registry: Registry
    paths: dict[str, Path]
    say: Say
    results: dict[str, dict] = field(default_factory=dict)


class StagePaused(Exception):
    """A stage stopped on purpose before its end (``distill.stop_after_steps``: pre-emptible jobs). It is not
    marked done, so the next run resumes it from its last checkpoint instead of reusing a half result."""


@dataclass(frozen=True)
class Stage:
    number: int
    name: str
    what: str
    action: Callable[[Any], dict]
    wanted: Callable[[Any], bool] = lambda config: True
    reads: tuple[str, ...] = ()  # recipe fields its result depends on (``LOCATIONS`` need not be named)
    inputs: tuple[str, ...] = ()  # earlier stages whose artifacts it consumes
    owns: tuple[str, ...] = ()  # folders (globs) under the run directory that it writes


def recipe(config, stage: Stage) -> dict:
    """The values of the fields a stage reads, in plain JSON, runtime knobs left out."""
    return recipe_of(config, stage.reads)


def recipe_of(config, names: Iterable[str]) -> dict:
    """The values of the recipe fields ``names`` as a stage's marker records them (runtime knobs left out)."""
    def plain(name: str, value: object) -> object:
        if not dataclasses.is_dataclass(value):
            return value
        knobs, later = RUNTIME_KNOBS.get(name, set()), ADDED_LATER.get(name, {})
        return {k: v for k, v in dataclasses.asdict(value).items()
                if k not in knobs and (k not in later or v != later[k])}

    return json.loads(json.dumps({name: plain(name, getattr(config, name)) for name in names}, default=str))


class Markers:
    """Finished stages: a JSON result per stage (with the fingerprint it was made with), written atomically;
    a ``.started`` note while a stage runs, so an interrupted stage with other settings is not resumed."""

    def __init__(self, run_dir: Path):
        self.folder = run_dir / "stages"

    def path(self, stage: Stage, suffix: str = ".json") -> Path:
        path = self.folder / f"{stage.name}{suffix}"
        legacy = self.folder / f"{stage.number}-{stage.name}{suffix}"  # runs from before the single numbering
        if not path.exists() and legacy.exists():
            legacy.replace(path)
        return path

    def read(self, stage: Stage, suffix: str = ".json") -> dict | None:
        path = self.path(stage, suffix)
        return json.loads(path.read_text()) if path.exists() else None

    def write(self, stage: Stage, result: dict, suffix: str = ".json") -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path(stage, suffix), json.dumps(result, indent=2, ensure_ascii=False, default=str))

    def forget(self, stage: Stage, suffix: str = ".json") -> bool:
        path = self.path(stage, suffix)
        if path.exists():
            path.unlink()
            return True
        return False


@dataclass(frozen=True)
class StageState:
    """Where one stage stands for this recipe: ``done``, ``stale`` (done with other settings), ``to run``
    or ``off``; ``why`` names the changed fields or inputs. ``recipe``, ``fingerprint`` (a hash of the recipe
    and of the inputs' fingerprints; ``off`` for a stage this config skips) and ``inputs`` (those fingerprints)
    are what a result made now records."""

    stage: Stage
    state: str
    why: str
    recipe: dict
    fingerprint: str
    inputs: dict[str, str]


def why_stale(done: dict, wanted: dict, inputs: dict[str, str]) -> str:
    """The changed fields of a finished stage's recipe, else its inputs that changed ('' when neither did).
    A result from before fingerprints (no recorded inputs) is judged on the fields it recorded only."""
    made_with = done.get("recipe", wanted)
    legacy = "inputs" not in done
    if legacy:
        wanted, made_with = _within(wanted, made_with), _within(made_with, wanted)
    changed = _changed(made_with, wanted)
    if changed:
        return "changed: " + ", ".join(changed)
    moved = [] if legacy else sorted(name for name, fp in inputs.items() if done["inputs"].get(name) != fp)
    return f"input re-runs: {', '.join(moved)}" if moved else ""


def _within(recipe: dict, other: dict) -> dict:
    """``recipe`` cut to the sections, and the fields of a section, that ``other`` recorded too."""
    return {k: {f: v for f, v in value.items() if f in other[k]} if isinstance(value, dict) and isinstance(other[k], dict)
            else value for k, value in recipe.items() if k in other}


def _changed(before: dict, now: dict) -> list[str]:
    """``section.field`` for every field that differs (a whole section's name when it is not a mapping)."""
    out = []
    for k in sorted(set(before) | set(now)):
        old, new = before.get(k), now.get(k)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            out += [f"{k}.{f}" for f in sorted(set(old) | set(new)) if old.get(f) != new.get(f)]
        else:
            out.append(k)
    return out


def plan(config, stages: tuple[Stage, ...], markers: Markers) -> list[StageState]:
    """Every stage's state for this recipe, stale-ness propagated downstream through ``inputs``."""
    states: dict[str, StageState] = {}
    for stage in stages:
        if not stage.wanted(config):
            states[stage.name] = StageState(stage, "off", "off in this config", {}, "off", {})
            continue
        wanted = recipe(config, stage)
        inputs = {name: states[name].fingerprint for name in stage.inputs}
        payload = json.dumps({"recipe": wanted, "inputs": inputs}, sort_keys=True)
        made = (wanted, hashlib.sha256(payload.encode()).hexdigest()[:16], inputs)
        done = markers.read(stage)
        if done is None:
            states[stage.name] = StageState(stage, "to run", "not run yet", *made)
            continue
        why = why_stale(done, wanted, inputs)
        upstream = [n for n in stage.inputs if states[n].state in ("stale", "to run")]
        if not why and upstream:
            why = f"input re-runs: {', '.join(upstream)}"
        states[stage.name] = StageState(stage, "stale" if why else "done", why, *made)
    return list(states.values())


def clear_owned(run_dir: Path, stage: Stage) -> list[str]:
    """Remove the folders a stage owns (before it re-runs for a change); the names removed."""
    removed = []
    for pattern in stage.owns:
        for path in sorted(run_dir.glob(pattern)):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path.name)
    return removed


class ReadRecorder:
    """The recipe as a stage sees it, noting every field the stage reads (through properties and methods
    too), so a test can prove each stage's declared ``reads`` cover what it touches."""

    def __init__(self, config):
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "touched", set())

    def __getattr__(self, name: str):
        config = object.__getattribute__(self, "_config")
        attribute = getattr(type(config), name, None)
        if isinstance(attribute, property):
            return attribute.fget(self)
        if callable(attribute):
            return attribute.__get__(self)  # a method reads the fields through the recorder as well
        self.touched.add(name)
        return getattr(config, name)

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"a stage may not change the recipe ({name})")


__all__ = ["BOOKKEEPING", "LOCATIONS", "Markers", "ReadRecorder", "Run", "Stage", "StagePaused", "StageState", "clear_owned",
           "plan", "recipe"]
