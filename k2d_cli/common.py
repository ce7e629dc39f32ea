"""What every ``k2d`` command shares: the console, the store option, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from k2d.registry import UnknownModelError

console = Console(stderr=True, soft_wrap=True)
StoreOption = Annotated[Path | None, typer.Option("--store", help="Model store folder [default: $K2D_MODELS_DIR or ./models]")]

_USER_ERRORS: tuple[type[BaseException], ...] = (
    UnknownModelError, FileNotFoundError, ValueError, OSError, KeyError, RuntimeError,
)


def fail(message: str) -> None:
    console.print("error: ", style="bold red", end="")
    console.print(message, highlight=False, markup=False)
    raise typer.Exit(code=1)


def run_guarded(action):
    """Turn an expected failure into a one-line error and exit status 1 (no traceback)."""
    try:
        return action()
    except typer.Exit:
        raise
    except _USER_ERRORS as err:
        fail(str(err).splitlines()[0] if str(err) else type(err).__name__)


def say(message: str) -> None:
    console.print(message, highlight=False, markup=False)
