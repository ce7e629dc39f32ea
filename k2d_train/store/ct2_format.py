"""Reader and writer for CTranslate2's ``model.bin``.

We read the binary ourselves (instead of asking ctranslate2 to load the model) because the
only real Whisper weights we can get without a model hub ship as CTranslate2 files, and the
training side needs them as numpy arrays to build a transformers checkpoint. The layout is
little-endian: header, variables, aliases (see ``../shared/ASSETS.md``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

SUPPORTED_BINARY_VERSIONS = (5, 6)

_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
}
_BF16 = 5
_DTYPE_CODES = {dt: code for code, dt in _DTYPES.items()}


class ModelBinError(ValueError):
    """A ``model.bin`` that is truncated, foreign, or of an unsupported version."""


@dataclass
class CT2Model:
    """The decoded content of a ``model.bin``: spec name, revision, named arrays, aliases."""

    spec_name: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)
    binary_version: int = 6

    def get(self, name: str) -> np.ndarray:
        """Return a variable, following an alias (e.g. the tied output projection)."""
        if name in self.variables:
            return self.variables[name]
        if name in self.aliases:
            return self.variables[self.aliases[name]]
        raise KeyError(f"model.bin has no variable {name!r}")

    def scalar(self, name: str, default: int | None = None) -> int | None:
        if name not in self.variables and name not in self.aliases:
            return default
        return int(self.get(name).reshape(-1)[0])


class _Reader:
    def __init__(self, stream: BinaryIO, origin: str):
        self._stream = stream
        self._origin = origin

    def take(self, n: int) -> bytes:
        data = self._stream.read(n)
        if len(data) != n:
            raise ModelBinError(f"{self._origin}: truncated model.bin (wanted {n} more bytes, got {len(data)})")
        return data

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        raw = self.take(self.u16())
        if not raw.endswith(b"\0"):
            raise ModelBinError(f"{self._origin}: corrupt string in model.bin")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as err:
            raise ModelBinError(f"{self._origin}: corrupt string in model.bin") from err


def _read_array(reader: _Reader) -> np.ndarray:
    rank = reader.u8()
    dims = [reader.u32() for _ in range(rank)]
    code = reader.u8()
    nbytes = reader.u32()
    raw = reader.take(nbytes)
    if code == _BF16:
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        array = bits.view(np.float32)
    elif code in _DTYPES:
        array = np.frombuffer(raw, dtype=_DTYPES[code])
    else:
        raise ModelBinError(f"unknown dtype code {code} in model.bin")
    expected = int(np.prod(dims)) if dims else 1
    if array.size != expected:
        raise ModelBinError(f"variable size {array.size} does not match its shape {dims}")
    return array.reshape(dims)


def read_model_bin(path: str | Path | BinaryIO) -> CT2Model:
    """Parse a ``model.bin`` (path or binary stream) into a :class:`CT2Model`."""
    if isinstance(path, (str, Path)):
        path = Path(path)
        if not path.is_file():
            raise ModelBinError(f"{path}: no such model.bin")
        with path.open("rb") as fh:
            return _parse(fh, str(path))
    return _parse(path, "<stream>")


def _parse(stream: BinaryIO, origin: str) -> CT2Model:
    reader = _Reader(stream, origin)
    version = reader.u32()
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise ModelBinError(
            f"{origin}: not a CTranslate2 model.bin this reader knows (binary version {version}, "
            f"expected one of {SUPPORTED_BINARY_VERSIONS})"
        )
    spec_name = reader.string()
    revision = reader.u32()
    count = reader.u32()
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = reader.string()
        variables[name] = _read_array(reader)
    aliases: dict[str, str] = {}
    for _ in range(reader.u32()):
        alias = reader.string()
        aliases[alias] = reader.string()
    if stream.read(1):
        raise ModelBinError(f"{origin}: trailing bytes after the model.bin aliases (foreign or corrupt file)")
    return CT2Model(spec_name, revision, variables, aliases, version)


def _write_string(out: BinaryIO, text: str) -> None:
    raw = text.encode("utf-8") + b"\0"
    out.write(struct.pack("<H", len(raw)))
    out.write(raw)


def write_model_bin(model: CT2Model, path: str | Path) -> None:
    """Serialise ``model`` in the same layout, streaming to disk (random paper-shape models are GBs)."""
    with Path(path).open("wb") as out:
        out.write(struct.pack("<I", model.binary_version))
        _write_string(out, model.spec_name)
        out.write(struct.pack("<II", model.revision, len(model.variables)))
        for name, array in model.variables.items():
            dtype = np.dtype(array.dtype).newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
            if dtype not in _DTYPE_CODES:
                raise ModelBinError(f"cannot write dtype {array.dtype} for {name}")
            _write_string(out, name)
            out.write(struct.pack("<B", array.ndim))
            out.write(struct.pack(f"<{array.ndim}I", *array.shape))
            raw = np.ascontiguousarray(array, dtype=dtype)
            out.write(struct.pack("<BI", _DTYPE_CODES[dtype], raw.nbytes))
            out.write(raw.tobytes())
        out.write(struct.pack("<I", len(model.aliases)))
        for alias, target in model.aliases.items():
            _write_string(out, alias)
            _write_string(out, target)
