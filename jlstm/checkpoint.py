"""Safe, atomic, verified checkpoints for parameter and optimizer pytrees.

A checkpoint is one file that executes no code when it is read (no pickle)::

    b"JLSTMCKP"                  8 bytes, magic
    header_size                  8 bytes, little-endian uint64
    sha256(header)               32 bytes
    header                       header_size bytes of UTF-8 JSON
    payload                      flax.serialization msgpack of {"0": leaf0, "1": leaf1, ...}

The JSON header holds the format version, the SHA-256 and size of the payload, one
entry per leaf (its path such as ``[0].w_x``, its kind, shape and dtype) and the user's
``metadata`` (model configuration, step, ...). ``None`` leaves (``LSTMParams.w_c`` without
peepholes, for example) are recorded as such, so a tree with peepholes never loads into one
without. Typed PRNG keys (``jax.random.key``) are stored as their key data plus the name of
their implementation and wrapped back on load.

:func:`save` writes to a temporary file in the target's directory, flushes and fsyncs it,
then renames it over the target with :func:`os.replace`: a crash leaves either the old file
or the new one, never a mixture. :func:`load` checks the magic, both checksums, every
leaf's path, shape and dtype against a template ``like``, and builds the whole result
before returning it; on any problem it raises :class:`CheckpointError` and returns nothing.

Example:
  >>> import os, tempfile
  >>> cell = jlstm.lstm(32)
  >>> params = cell.init(jax.random.key(0), 8)
  >>> with tempfile.TemporaryDirectory() as folder:
  ...     path = os.path.join(folder, "model.ckpt")
  ...     jlstm.checkpoint.save(path, params, metadata={"hidden": 32, "step": 1000})
  ...     restored, meta = jlstm.checkpoint.load(path, like=cell.init(jax.random.key(1), 8))
  >>> meta["step"], bool(jnp.all(restored.w_h == params.w_h))
  (1000, True)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "TrainState",
    "describe",
    "load",
    "load_train_state",
    "read_metadata",
    "save",
    "save_train_state",
]

FORMAT_VERSION = 1
_MAGIC = b"JLSTMCKP"
_PREFIX = len(_MAGIC) + 8 + 32  # magic, header size, header sha256


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupt, or does not match the requested structure."""


# --------------------------------------------------------------------------------------
# Tree description
# --------------------------------------------------------------------------------------

def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _flatten(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    """Leaves with their ``keystr`` paths; ``None`` counts as a leaf so that it is recorded."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves], treedef


def _leaf_spec(path: str, leaf: Any) -> dict[str, Any]:
    if leaf is None:
        return {"path": path, "kind": "none"}
    if _is_key(leaf):
        return {"path": path, "kind": "key", "impl": str(jax.random.key_impl(leaf)),
                "shape": list(leaf.shape)}
    arr = np.asarray(leaf)
    return {"path": path, "kind": "array", "shape": list(arr.shape), "dtype": arr.dtype.name}


def _describe_spec(spec: dict[str, Any]) -> str:
    if spec["kind"] == "none":
        return "None"
    if spec["kind"] == "key":
        return f"PRNG key<{spec['impl']}> of shape {tuple(spec['shape'])}"
    return f"{spec['dtype']} array of shape {tuple(spec['shape'])}"


def describe(tree: Any) -> list[dict[str, Any]]:
    """The structure description stored in a checkpoint header: one dict per leaf.

    Args:
      tree: any pytree of arrays, ``None`` and PRNG keys.

    Returns:
      A list of ``{"path", "kind", "shape", "dtype" | "impl"}`` dicts in flattening order,
      where ``kind`` is ``"array"``, ``"key"`` or ``"none"``.
    """
    return [_leaf_spec(path, leaf) for path, leaf in _flatten(tree)[0]]


# --------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------

def _encode(target: Any, metadata: dict[str, Any] | None) -> bytes:
    leaves, _ = _flatten(target)
    specs, arrays = [], {}
    for i, (path, leaf) in enumerate(leaves):
        if leaf is not None and not _is_key(leaf) and not hasattr(leaf, "shape") \
                and not isinstance(leaf, (int, float, bool, complex, np.generic)):
            raise TypeError(
                f"checkpoint.save: the leaf at {path or '<root>'} is a {type(leaf).__name__}; "
                f"a checkpoint holds arrays, Python numbers, PRNG keys and None only. Keep "
                f"configuration in `metadata=` instead.")
        spec = _leaf_spec(path, leaf)
        specs.append(spec)
        if spec["kind"] == "key":
            arrays[str(i)] = np.asarray(jax.random.key_data(cast(jax.Array, leaf)))
        elif spec["kind"] == "array":
            arrays[str(i)] = np.asarray(leaf)
    payload = serialization.msgpack_serialize(arrays)
    try:
        meta_json = json.loads(json.dumps(metadata if metadata is not None else {}))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"checkpoint.save: metadata must be JSON-serialisable (dicts, lists, str, numbers, "
            f"bool, None), got an error: {e}; convert arrays with .tolist() or float().") from e
    header = {
        "format": "jlstm.checkpoint",
        "version": FORMAT_VERSION,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_size": len(payload),
        "leaves": specs,
        "treedef": str(_flatten(target)[1]),
        "metadata": meta_json,
    }
    header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")
    return (_MAGIC + struct.pack("<Q", len(header_bytes)) + hashlib.sha256(header_bytes).digest()
            + header_bytes + payload)


def check_path(path: str | os.PathLike, where: str) -> str:
    """The folder of ``path``, once checked that ``path`` can name a checkpoint file: the folder exists and
    ``path`` is not a folder itself."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{where}: the folder {directory!r} of {path!r} does not exist; create it first "
                                f"(os.makedirs(folder, exist_ok=True)). Checkpoints create no folders, so that a "
                                f"mistyped path fails instead of writing somewhere unexpected.")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{where}: {path!r} is a folder; pass the path of a file in it, "
                                f"such as {os.path.join(path, 'params.ckpt')!r}.")
    return directory


def save(path: str | os.PathLike, target: Any, *, metadata: dict[str, Any] | None = None) -> None:
    """Write ``target`` to ``path`` atomically, with checksums and a structure description.

    Args:
      path: the file to write (its directory must exist). An existing file is replaced
        only once the new one is complete and synced to disk.
      target: a pytree of arrays, Python numbers, ``None`` and PRNG keys: params, an optax
        state, a tuple of both, a dict...
      metadata: JSON-serialisable information stored in the header (model configuration,
        step, ...), returned by :func:`load`.

    Raises:
      TypeError: a leaf is not an array (or metadata is not JSON-serialisable).
      FileNotFoundError: the folder of ``path`` does not exist (save creates no folders).
      IsADirectoryError: ``path`` is a folder.
      OSError: the file cannot be written; the previous file at ``path`` is left intact and
        no temporary file remains.
    """
    data = _encode(target, metadata)
    path = os.fspath(path)
    directory = check_path(path, "checkpoint.save")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename durable; not possible on every platform
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

def _read_header(data: bytes, path: str) -> tuple[dict[str, Any], bytes]:
    if len(data) < _PREFIX:
        raise CheckpointError(
            f"{path}: truncated checkpoint: {len(data)} bytes, shorter than the {_PREFIX}-byte "
            f"prefix; the file is incomplete (an interrupted copy?).")
    if data[:len(_MAGIC)] != _MAGIC:
        raise CheckpointError(
            f"{path}: not a jlstm checkpoint (magic bytes {data[:len(_MAGIC)]!r}, expected "
            f"{_MAGIC!r}); write it with jlstm.checkpoint.save.")
    (size,) = struct.unpack("<Q", data[len(_MAGIC):len(_MAGIC) + 8])
    digest = data[len(_MAGIC) + 8:_PREFIX]
    if len(data) < _PREFIX + size:
        raise CheckpointError(
            f"{path}: truncated checkpoint: the header needs {size} bytes after the prefix but "
            f"only {len(data) - _PREFIX} are there.")
    header_bytes = data[_PREFIX:_PREFIX + size]
    if hashlib.sha256(header_bytes).digest() != digest:
        raise CheckpointError(f"{path}: header checksum mismatch: the header is corrupt.")
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:  # pragma: no cover - checksum first
        raise CheckpointError(f"{path}: the header is not valid JSON ({e}).") from e
    if header.get("format") != "jlstm.checkpoint" or not isinstance(header.get("version"), int):
        raise CheckpointError(f"{path}: the header does not describe a jlstm checkpoint.")
    if header["version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {header['version']} is newer than this jlstm "
            f"reads ({FORMAT_VERSION}); upgrade jlstm.")
    return header, data[_PREFIX + size:]


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], bytes]:
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    header, payload = _read_header(data, path)
    if len(payload) != header["payload_size"]:
        what = "truncated" if len(payload) < header["payload_size"] else "has trailing bytes"
        raise CheckpointError(
            f"{path}: the payload {what}: {len(payload)} bytes, expected {header['payload_size']}.")
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise CheckpointError(f"{path}: payload checksum mismatch: the array data is corrupt.")
    return header, payload


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The user metadata of a checkpoint (checksums verified), without a template.

    Raises:
      CheckpointError: the file is truncated or corrupt.
    """
    return _read(path)[0]["metadata"]


def load(path: str | os.PathLike, like: Any) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint into the structure of ``like``, all or nothing.

    Args:
      path: a file written by :func:`save`.
      like: a template with the expected structure, shapes and dtypes, such as
        ``cell.init(key, input_size)`` or ``optimizer.init(params)`` (its values are unused).

    Returns:
      ``(target, metadata)``: a pytree with ``like``'s structure holding the stored arrays
      (bit-exact), and the metadata dict given to :func:`save`. Each leaf has the kind of
      the template's leaf: a jax array, a NumPy array, or a Python number.

    Raises:
      CheckpointError: the file is truncated, corrupt (checksum mismatch), or its structure,
        shapes or dtypes differ from ``like``; the message names the first differing path.
        Nothing is returned in that case.
      FileNotFoundError: ``path`` does not exist.
    """
    path_str = os.fspath(path)
    header, payload = _read(path)
    leaves, treedef = _flatten(like)
    stored = _match_structure(path_str, header, [_leaf_spec(p, leaf) for p, leaf in leaves])
    try:
        arrays = serialization.msgpack_restore(payload)
    except Exception as e:  # pragma: no cover - the checksum catches corruption first
        raise CheckpointError(f"{path_str}: the payload cannot be decoded ({e}).") from e
    out = [_restore_leaf(path_str, i, spec, arrays, leaves[i][1]) for i, spec in enumerate(stored)]
    return jax.tree_util.tree_unflatten(treedef, out), header["metadata"]


# Fields renamed since checkpoints were first written: old name -> new name. A stored leaf whose path
# differs from the template's only by these names loads into the new field (see CHANGELOG.md).
RENAMED_FIELDS = {"r": "w_h", "C": "c"}


def _current_path(path: str) -> str:
    """A stored leaf path with the renamed fields (:data:`RENAMED_FIELDS`) under their new names."""
    return re.sub(r"\.([A-Za-z_]\w*)", lambda m: "." + RENAMED_FIELDS.get(m.group(1), m.group(1)), path)


def _match_structure(path_str: str, header: dict[str, Any], wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stored leaf specs, checked against the template's: paths, then kinds, shapes and dtypes."""
    stored = header["leaves"]
    for k in range(min(len(stored), len(wanted))):  # structure first: the leaf paths
        got, want = stored[k], wanted[k]
        if got["path"] != want["path"] and _current_path(got["path"]) == want["path"]:
            stored[k] = got = {**got, "path": want["path"]}
        if got["path"] != want["path"]:
            raise CheckpointError(
                f"{path_str}: structure mismatch at leaf {k}: the template has {want['path'] or '<root>'} "
                f"but the checkpoint has {got['path'] or '<root>'}; the checkpoint was saved from "
                f"another model or optimizer (checkpoint tree: {header.get('treedef')}).")
    if len(stored) != len(wanted):
        extra = stored[len(wanted)] if len(stored) > len(wanted) else wanted[len(stored)]
        where = "checkpoint" if len(stored) > len(wanted) else "template"
        raise CheckpointError(
            f"{path_str}: structure mismatch: the checkpoint has {len(stored)} leaves, the template "
            f"{len(wanted)}; first extra leaf in the {where}: {extra['path'] or '<root>'}.")
    for got, want in zip(stored, wanted):  # then kinds, shapes and dtypes
        if got != want:
            raise CheckpointError(
                f"{path_str}: mismatch at {want['path'] or '<root>'}: expected "
                f"{_describe_spec(want)} (from `like`), got {_describe_spec(got)} in the "
                f"checkpoint; build `like` with the configuration the checkpoint was saved with"
                f" (metadata: {json.dumps(header['metadata'])[:200]}).")
    return stored


def _restore_leaf(path_str: str, i: int, spec: dict[str, Any], arrays: Any, like_leaf: Any) -> Any:
    """Leaf ``i`` from the decoded payload, as the template's kind of leaf."""
    if spec["kind"] == "none":
        return None
    arr = arrays.get(str(i)) if isinstance(arrays, dict) else None
    if arr is None:  # pragma: no cover - the checksum catches this first
        raise CheckpointError(f"{path_str}: the payload lacks the data for {spec['path']}.")
    arr = np.asarray(arr)
    if spec["kind"] == "key":
        return jax.random.wrap_key_data(jnp.asarray(arr), impl=spec["impl"])
    if list(arr.shape) != spec["shape"] or arr.dtype.name != spec["dtype"]:  # pragma: no cover
        raise CheckpointError(
            f"{path_str}: the payload for {spec['path']} is {arr.dtype.name}{list(arr.shape)}, "
            f"but the header says {spec['dtype']}{spec['shape']}.")
    return _like_type(arr, like_leaf)


def _like_type(arr: np.ndarray, like_leaf: Any) -> Any:
    """Return the stored values as the template's kind of leaf: a jax array, NumPy array or Python number."""
    if isinstance(like_leaf, (bool, int, float, complex)) and not isinstance(like_leaf, np.generic):
        return type(like_leaf)(arr.item())
    if isinstance(like_leaf, (np.ndarray, np.generic)):
        return arr if isinstance(like_leaf, np.ndarray) else arr[()]
    return jnp.asarray(arr)


# --------------------------------------------------------------------------------------
# Training state
# --------------------------------------------------------------------------------------

class TrainState(NamedTuple):
    """What :func:`load_train_state` returns."""

    params: Any
    opt_state: Any
    step: int
    config: dict[str, Any]
    metadata: dict[str, Any]


def save_train_state(path: str | os.PathLike, params: Any, opt_state: Any, step: int,
                     config: dict[str, Any] | None = None, *,
                     extra: dict[str, Any] | None = None) -> None:
    """Save params and optimizer state together with the step count and a model config.

    Args:
      path: the file to write (atomically, see :func:`save`).
      params: the model params pytree.
      opt_state: the optax state (``optimizer.init(params)`` after some updates).
      step: the number of optimizer steps taken so far.
      config: JSON-serialisable model/training configuration, returned on load.
      extra: more JSON-serialisable metadata (a training history, for example).
    """
    metadata = {"step": int(step), "config": config if config is not None else {}}
    if extra:
        metadata.update(extra)
    save(path, {"params": params, "opt_state": opt_state}, metadata=metadata)


def load_train_state(path: str | os.PathLike, like_params: Any, like_opt_state: Any) -> TrainState:
    """Load what :func:`save_train_state` wrote, checked against template params and state.

    Returns:
      :class:`TrainState` ``(params, opt_state, step, config, metadata)``.

    Raises:
      CheckpointError: as :func:`load`.
    """
    target, meta = load(path, {"params": like_params, "opt_state": like_opt_state})
    return TrainState(target["params"], target["opt_state"], int(meta.get("step", 0)),
                      meta.get("config", {}), meta)
