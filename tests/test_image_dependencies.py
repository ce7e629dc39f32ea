"""Each image's entrypoint imports and runs in exactly the set of distributions that image installs.

Building the images needs a Docker engine and a real venv per image needs hundreds of MB from PyPI
on every run. The cheaper check used here is still honest about the failure it exists for (an image
that lacks a dependency its entrypoint imports, as the serving image lacked matplotlib for the load
tester): it reads what each Dockerfile installs (extras of this pyproject, requirement files),
resolves that set's dependency closure from the installed distributions' own metadata, links only
those distributions into an empty folder, and runs the entrypoint with ``python -S`` on that folder
alone — no site-packages, no repository on the path. What it does not check: versions pip would pick
in the image (the dev venv's are used) and system libraries (the base image's).
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from app.settings import Settings
from tests.conftest import MANIFEST, REPO, free_port, running_server

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def image_text(dockerfile: str) -> str:
    """The default target's stages only (the last stage, its parents and the stages it copies from):
    the Dockerfile's training stage is a different image from the same file."""
    stages: dict[str, str] = {}
    for block in re.split(r"(?m)^(?=FROM )", (REPO / dockerfile).read_text()):
        name = re.match(r"FROM \S+(?: AS (\S+))?", block)
        if name:
            stages[name.group(1) or f"#{len(stages)}"] = block
    wanted, todo = [], [list(stages)[-1]]
    while todo:
        stage = todo.pop()
        if stage in stages and stage not in wanted:
            wanted.append(stage)
            block = stages[stage]
            todo += re.findall(r"^FROM (\S+)", block, re.M) + re.findall(r"--from=(\S+)", block)
    return "\n".join(stages[stage] for stage in wanted)


def image_requirements(dockerfile: str) -> list[str]:
    """What a Dockerfile's default image installs: ``scripts/setup.sh EXTRAS`` (k2d[EXTRAS]) or
    ``pip install . -r FILE``."""
    text = image_text(dockerfile)
    wanted = [f"k2d[{extras}]" for extras in re.findall(r"scripts/setup\.sh (\w+)", text)]
    for line in re.findall(r"pip install [^\n]*", text):
        words = line.split()
        wanted += ["k2d"] if "." in words else []
        wanted += [r for i, w in enumerate(words) if w == "-r" for r in _requirement_file(REPO / words[i + 1])]
    assert wanted, f"{dockerfile}: no install step found"
    return wanted


def _requirement_file(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _requires(name: str) -> list[str]:
    """A distribution's declared requirements; k2d's come from this pyproject, as the image builds it."""
    if name == "k2d":
        project = PYPROJECT["project"]
        extras = project["optional-dependencies"]
        return project["dependencies"] + [f"{r}; extra == '{e}'" for e, reqs in extras.items() for r in reqs]
    return metadata.distribution(name).requires or []


def closure(requirements: list[str]) -> set[str]:
    """Every distribution pip would install for ``requirements``, from installed metadata (markers, extras)."""
    done: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name, extras = canonicalize_name(requirement.name), set(requirement.extras)
        if name in done and extras <= done[name]:
            continue
        done[name] = done.get(name, set()) | extras
        for line in _requires(name):
            child = Requirement(line)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in done[name] | {""}):
                todo.append(child)
    return set(done)


def environment(folder: Path, dockerfile: str) -> Path:
    """A folder holding only the image's distributions (links into this venv) and k2d's packages."""
    folder.mkdir()
    for name in sorted(closure(image_requirements(dockerfile)) - {"k2d"}):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{dockerfile} installs {name}, which this venv lacks (scripts/setup.sh dev)")
        for top in {Path(f).parts[0] for f in dist.files or ()}:
            source = Path(dist.locate_file(top))
            if top in ("..", "__pycache__") or top.endswith(".pth") or not source.exists():
                continue
            if not (folder / top).exists():
                (folder / top).symlink_to(source)
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in REPO.iterdir():
        if (package / "__init__.py").exists() and any(fnmatch(package.name, p) for p in patterns):
            (folder / package.name).symlink_to(package)
    return folder


def run_in(env: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -S -s`` with only ``env`` on the path, from a folder outside the repository."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    clean.update(PYTHONPATH=str(env), PYTHONNOUSERSITE="1", MPLCONFIGDIR=str(env.parent / "mpl"))
    return subprocess.run([sys.executable, "-S", "-s", *args], capture_output=True, text=True, cwd=env.parent,
                          env=clean, timeout=timeout)


def test_loadtest_requirements_use_pyprojects_specifiers():
    """The load tester's list repeats pyproject's specifiers (no drift between the image and a dev install)."""
    declared = {canonicalize_name(Requirement(r).name): Requirement(r).specifier
                for reqs in PYPROJECT["project"]["optional-dependencies"].values() for r in reqs if not r.startswith("k2d")}
    for line in _requirement_file(REPO / "deploy/loadtest/requirements.txt"):
        requirement = Requirement(line)
        assert requirement.specifier == declared[canonicalize_name(requirement.name)], line


def test_the_closure_follows_extras_and_markers():
    serve = closure(["k2d[serve]"])
    assert {"ctranslate2", "faster-whisper", "fastapi", "uvicorn", "numpy"} <= serve
    assert {"uvloop", "httptools"} & serve  # uvicorn[standard]'s extra
    assert not {"torch", "transformers", "matplotlib"} & serve


def test_the_serving_image_entrypoint_imports_in_its_environment(tmp_path):
    env = environment(tmp_path / "env", "Dockerfile")
    assert run_in(env, "-m", "k2d_cli", "--help").returncode == 0
    code = ("import sys; import app.main; app.main.create_app(); "
            "bad = [m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = run_in(env, "-c", code)
    assert result.returncode == 0, result.stdout + result.stderr
    # the control: this environment really is the image's — the load tester's plots could not run in it
    result = run_in(env, "-c", "import matplotlib")
    assert result.returncode != 0 and "No module named 'matplotlib'" in result.stderr


def test_the_loadtest_image_runs_its_entrypoint_and_writes_a_report(served_store, tmp_path):
    env = environment(tmp_path / "env", "Dockerfile.loadtest")
    assert not {"ctranslate2", "faster-whisper", "torch"} & closure(image_requirements("Dockerfile.loadtest"))
    result = run_in(env, "-m", "loadtest", "--help")
    assert result.returncode == 0 and "--out" in result.stdout, result.stderr
    out = tmp_path / "reports"  # the container user's own folder
    out.mkdir(mode=0o700)
    settings = Settings(models_dir=served_store.store, port=free_port())
    with running_server(settings) as (url, _):
        result = run_in(env, "-m", "loadtest", "--url", url, "--manifest", str(MANIFEST), "--out", str(out),
                        "--model", "whisper-tiny.en", "--concurrency", "1", "--requests", "2", "--rounds", "1",
                        "--warmup", "0", "--language", "en")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert (out / "summary.json").exists() and "whisper-tiny.en" in (out / "report.md").read_text()
    assert (out / "latency_cdf.png").read_bytes()[:4] == b"\x89PNG"
