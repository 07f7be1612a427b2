"""Files: atomic output (write to a temporary name beside the target, rename when complete), and the checks
every file a user hands over passes before a library opens it (`regular_file`, `read_text`,
`check_safetensors` / `load_safetensors`, `check_onnx`)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it to `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ------------------------------------------------------------------------ reading files a user hands over
# A file a user names may be anything: a symlink to /dev/zero, a named pipe, a header that claims terabytes,
# an ONNX file whose tensors point at /etc/passwd. These checks run before any library opens the file, so a
# hostile or broken file is one ConfigError naming it, memory stays bounded, and nothing outside it is read.
MAX_TEXT_BYTES = 16 << 20  # config.json, structure.json, a recipe: a few KB in practice
MAX_SAFETENSORS_HEADER = 100 << 20  # safetensors' own limit
MAX_ONNX_BYTES = 2 << 30  # protobuf's limit: larger models keep their weights in external data files


def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` with symlinks resolved, if that is a regular file (not a device, pipe, socket or directory);
    else a ConfigError naming it."""
    import stat

    from .errors import ConfigError

    path = Path(path)
    try:
        real = path.resolve(strict=True)
        mode = real.stat().st_mode
    except (OSError, RuntimeError) as e:  # missing, a dangling or looping symlink, unreadable
        raise ConfigError(f"{what} {path} cannot be opened ({type(e).__name__}: {e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        via = f" (a link to {real})" if real != path.absolute() else ""
        raise ConfigError(f"{what} {path}{via} is {kind}, not a regular file; prune reads only regular files")
    return real


def read_text(path: str | os.PathLike, what: str = "file", limit: int = MAX_TEXT_BYTES) -> str:
    """The text of a small regular file (`regular_file`), refusing one larger than `limit` bytes."""
    from .errors import ConfigError

    real = regular_file(path, what)
    size = real.stat().st_size
    if size > limit:
        raise ConfigError(f"{what} {path} is {size:,} bytes, more than the {limit:,} such a file can need; "
                          "is it the right file?")
    with open(real, "rb") as f:
        data = f.read(limit + 1)
    return data.decode("utf-8")


def check_safetensors(path: str | os.PathLike) -> Path:
    """Check a safetensors file before it is opened: a regular file whose 8-byte header length fits in the
    file (and in `MAX_SAFETENSORS_HEADER`), whose header is a JSON object, and whose every tensor's
    `data_offsets` lie inside the file. Returns the resolved path; a ConfigError "... is not a readable
    safetensors file (why)" otherwise."""
    import json as _json
    import struct

    from .errors import ConfigError

    real = regular_file(path, "safetensors file")
    size = real.stat().st_size

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{path} is not a readable safetensors file ({why})")

    if size < 8:
        raise bad(f"{size} bytes, too short for a header")
    with open(real, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8 or n > MAX_SAFETENSORS_HEADER:
            raise bad(f"its header claims {n:,} bytes, the file holds {size - 8:,}")
        raw = f.read(n)
    try:
        header = _json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad("its header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data):
            raise bad(f"tensor {str(name)[:80]!r} has data offsets {str(offsets)[:80]} outside its {data:,} data bytes")
    return real


def load_safetensors(path: str | os.PathLike, hint: str = "") -> dict:
    """`safetensors.torch.load_file` of a file a user handed over, after `check_safetensors`; every failure is
    one ConfigError "PATH is not a readable safetensors file (why)" (+ `hint`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .errors import ConfigError

    try:
        real = check_safetensors(path)
        return load_file(real)
    except ConfigError as e:
        raise ConfigError(f"{e}{hint}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:120]}){hint}") from None


def _onnx_tensors(graph):
    """Every tensor an ONNX graph holds: initializers, sparse initializers, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            if attr.HasField("g"):
                yield from _onnx_tensors(attr.g)
            for g in attr.graphs:
                yield from _onnx_tensors(g)


def check_onnx(path: str | os.PathLike) -> None:
    """Check an ONNX file before onnxruntime (or onnx with its external data) loads it: a regular file
    below protobuf's 2 GiB that parses as a model with a graph (inputs, outputs, nodes), whose external
    tensors each name a relative `location` that stays inside the model's folder (symlinks resolved) and a
    regular file holding `offset + length` bytes. A ConfigError naming the file otherwise."""
    import onnx

    from .errors import ConfigError

    path = Path(path)
    real = regular_file(path, "ONNX file")
    size = real.stat().st_size
    if size == 0:
        raise ConfigError(f"{path} is an empty file, not an ONNX model")
    if size > MAX_ONNX_BYTES:
        raise ConfigError(f"{path} is {size:,} bytes, more than an ONNX file can hold (2 GiB); not an ONNX model")
    try:
        model = onnx.load(str(real), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ConfigError(f"{path} is not a valid ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    g = model.graph
    if model.ir_version < 1 or not g.node or not g.input or not g.output:
        raise ConfigError(f"{path} is not a valid ONNX model (no graph with inputs, outputs and nodes)")
    folder = path.parent.resolve()
    for t in _onnx_tensors(g):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")

        def refuse(why: str) -> ConfigError:
            return ConfigError(f"{path}: tensor {t.name[:80]!r} keeps its data in {loc[:200]!r}, {why}; prune "
                               "reads external data only from files inside the model's folder")

        if not loc or PurePosixPath(loc).is_absolute() or PureWindowsPath(loc).is_absolute() or PureWindowsPath(loc).drive:
            raise refuse("an absolute path" if loc else "no file")
        if ".." in PurePosixPath(loc.replace("\\", "/")).parts:
            raise refuse("a path that leaves the model's folder")
        try:
            target = (folder / loc).resolve(strict=True)
        except (OSError, RuntimeError):
            raise refuse("which does not exist") from None
        if not target.is_relative_to(folder):
            raise refuse(f"a link to {target}, outside the model's folder")
        try:
            regular_file(target, "external data file")
        except ConfigError as e:
            raise refuse(str(e).removeprefix("external data file ")) from None
        try:
            offset, length = int(info.get("offset") or 0), int(info.get("length") or 0)
        except ValueError:
            raise refuse("with an offset or length that is not a number") from None
        if offset < 0 or length < 0 or offset + length > target.stat().st_size:
            raise refuse(f"bytes {offset:,}+{length:,} of a {target.stat().st_size:,}-byte file")
