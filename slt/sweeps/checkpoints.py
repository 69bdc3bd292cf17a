"""Finding, identifying and loading training checkpoints, safely by default.

A sweep over checkpoints needs three things from each one: its training step, an identity that tells a
rerun whether the checkpoint was already analysed, and its weights loaded into a fresh model.
:func:`resolve_checkpoints` turns whatever the user passes (a folder, a glob, files, state dicts,
``(step, path)`` pairs) into a sorted list of :class:`Checkpoint` records without reading any weights;
:meth:`Checkpoint.load_state_dict` and :func:`build_model` do the reading, with clear errors for
corrupt files, unsafe pickles and checkpoints that do not fit the model.

``.safetensors`` files are read with ``safetensors``; ``.pt``/``.pth``/``.ckpt``/``.bin`` files with
``torch.load(..., weights_only=True)``, which cannot run code. Checkpoints that pickle arbitrary
Python objects load only with ``allow_pickle=True``, which warns: unpickling runs whatever code the file
contains.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from slt.warnings import CheckpointError, UnsafeCheckpointWarning

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "UnsafeCheckpointWarning",
    "CHECKPOINT_SUFFIXES",
    "resolve_checkpoints",
    "step_from_name",
    "load_state_dict",
    "build_model",
    "state_dict_fingerprint",
]

#: File suffixes picked up from a folder.
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
#: Keys under which training frameworks commonly nest the model's state dict.
NESTED_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")

StateDict = Mapping[str, Tensor]


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a training run: where its weights are and at which step they were saved.

    Attributes
    ----------
    step : int
        Training step (from the file name, the pair it was given in, or its position in a list).
    source : str
        The file path, or ``"state dict #i"`` for weights passed in memory.
    path : Path or None
        The file, when the weights are on disk.
    state_dict : mapping of str to Tensor or None
        The weights, when they were passed in memory.
    """

    step: int
    source: str
    path: Path | None = None
    state_dict: StateDict | None = field(default=None, repr=False, compare=False)

    def identity(self, mode: str = "stat") -> str:
        """A string that changes whenever the checkpoint's step or content changes.

        Parameters
        ----------
        mode : {"stat", "content"}
            For files: ``"stat"`` uses the absolute path, size and modification time (free);
            ``"content"`` hashes the bytes (reads the file; survives copying the folder elsewhere).
            Weights in memory are always hashed.
        """
        if mode not in ("stat", "content"):
            raise ValueError(f'checkpoint identity mode must be "stat" or "content", got {mode!r}')
        if self.path is None:
            assert self.state_dict is not None
            return f"step={self.step}|weights-sha256={state_dict_fingerprint(self.state_dict)}"
        try:
            info = self.path.stat()
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {self.source}: {exc.strerror or exc}") from exc
        if mode == "stat":
            return f"step={self.step}|{self.path.resolve()}|size={info.st_size}|mtime_ns={info.st_mtime_ns}"
        digest = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return f"step={self.step}|file-sha256={digest.hexdigest()}"

    def load_state_dict(
        self,
        *,
        allow_pickle: bool = False,
        state_dict_key: str | None = None,
        state_dict_prefix: str | None = None,
    ) -> dict[str, Tensor]:
        """The checkpoint's weights as a state dict of CPU tensors (see :func:`load_state_dict`)."""
        if self.path is None:
            assert self.state_dict is not None
            found = extract_state_dict(self.state_dict, self.source, state_dict_key)
            return strip_prefix(found, state_dict_prefix, self.source)
        return load_state_dict(
            self.path,
            allow_pickle=allow_pickle,
            state_dict_key=state_dict_key,
            state_dict_prefix=state_dict_prefix,
        )


#: An explicit step marker: ``step=1200``, ``step_1200``, ``step-1200``, ``step1200``, ``global_step=1200``.
_STEP_TOKEN = re.compile(r"(?<![a-z])(?:global_)?step[=_-]?(\d+)(?![\d.]|e[-+]?\d)", re.IGNORECASE)
#: Any number, decimals and exponents included (those are never steps).
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def step_from_name(path: str | os.PathLike[str]) -> int | None:
    """The training step encoded in a file name, or ``None`` when the name holds no whole number.

    An explicit step marker wins (``step=1200``, ``step_1200``, ``step-1200``, ``step1200``): so
    ``epoch=3-step=1200-val_loss=0.52.ckpt`` (PyTorch Lightning) gives 1200 and
    ``model_step1000_seed42.pt`` gives 1000. Without a marker the name must hold exactly one whole
    number (``ckpt-7.pt`` gives 7); decimals such as ``0.52`` or ``1e-3`` are never steps.

    Raises
    ------
    CheckpointError
        When the name is ambiguous: several different step markers, or several whole numbers and no
        marker (``run2-ckpt100.pt``). Pass ``(step, path)`` pairs for such files.
    """
    stem = Path(path).stem
    marked = list(dict.fromkeys(int(m.group(1)) for m in _STEP_TOKEN.finditer(stem)))
    if len(marked) == 1:
        return marked[0]
    if marked:
        raise CheckpointError(
            f"the file name {Path(path).name!r} has several step markers ({', '.join(map(str, marked))}); "
            "pass (step, path) pairs to say which checkpoint is at which step"
        )
    whole = [m.group(0) for m in _NUMBER.finditer(stem) if m.group(0).isdigit()]
    if not whole:
        return None
    if len(whole) > 1:
        raise CheckpointError(
            f"cannot tell the training step from the file name {Path(path).name!r}: it holds several "
            f"numbers ({', '.join(whole)}) and no step marker. Name files like 'step_1200.pt' or "
            "'epoch=3-step=1200.ckpt', or pass (step, path) pairs"
        )
    return int(whole[0])


def resolve_checkpoints(checkpoints: Any) -> list[Checkpoint]:
    """Turn the user's description of a set of checkpoints into :class:`Checkpoint` records, sorted by step.

    Nothing is loaded: files are only listed, so this is cheap even for thousands of large checkpoints.

    Parameters
    ----------
    checkpoints : str, PathLike, list or dict
        One of:

        * a folder: every ``.safetensors``, ``.pt``, ``.pth``, ``.ckpt`` and ``.bin`` file in it
          (not recursive);
        * a glob pattern such as ``"runs/a/step_*.pt"`` (``**`` recurses);
        * a single file;
        * a list of file paths;
        * a list of state dicts (steps 0, 1, 2, ... in list order);
        * a list of ``(step, path_or_state_dict)`` pairs, or a dict ``{step: path_or_state_dict}``.

        Steps of files come from their names unless given (see :func:`step_from_name`: an explicit
        ``step=``/``step_`` marker, else the only whole number in the name). A folder that exists is
        read as a folder even when its name holds glob characters (``run[seed=1]``).

    Returns
    -------
    list of Checkpoint

    Raises
    ------
    CheckpointError
        When nothing matches, a file has no step in its name, a path does not exist, or two
        checkpoints share a step.
    """
    if isinstance(checkpoints, (str, os.PathLike)):
        records = [_from_path(p, None) for p in _expand_location(checkpoints)]
    elif isinstance(checkpoints, Mapping):
        if checkpoints and all(isinstance(v, Tensor) for v in checkpoints.values()):
            raise CheckpointError(
                "checkpoints is a single state dict; pass a list of state dicts (or (step, state_dict) pairs)"
            )
        records = [_from_pair(step, value, i) for i, (step, value) in enumerate(checkpoints.items())]
    elif isinstance(checkpoints, Iterable):
        records = []
        for i, item in enumerate(checkpoints):
            if isinstance(item, tuple) and len(item) == 2 and not isinstance(item[0], (str, os.PathLike)):
                records.append(_from_pair(item[0], item[1], i))
            elif isinstance(item, Mapping):
                records.append(Checkpoint(step=i, source=f"state dict #{i}", state_dict=item))
            elif isinstance(item, (str, os.PathLike)):
                records.append(_from_path(item, None))
            else:
                raise CheckpointError(
                    f"checkpoint #{i} is a {type(item).__name__}; expected a path, a state dict or a "
                    "(step, path_or_state_dict) pair"
                )
    else:
        raise CheckpointError(
            "checkpoints must be a folder, a glob pattern, a list of paths or state dicts, or (step, path) "
            f"pairs; got {type(checkpoints).__name__}"
        )
    if not records:
        raise CheckpointError(f"no checkpoints given (checkpoints={checkpoints!r})")
    records.sort(key=lambda c: c.step)
    seen: dict[int, str] = {}
    for record in records:
        if record.step in seen:
            raise CheckpointError(
                f"two checkpoints share step {record.step}: {seen[record.step]} and {record.source}; "
                "pass (step, path) pairs to give each its own step"
            )
        seen[record.step] = record.source
    return records


def _expand_location(location: str | os.PathLike[str]) -> list[Path]:
    text = os.fspath(location)
    path = Path(text).expanduser()
    if any(ch in text for ch in "*?[") and not path.exists():
        pattern = _escape_existing_folder(os.path.expanduser(text))
        matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
        matches = [p for p in matches if p.is_file()]
        if not matches:
            raise CheckpointError(f"no files match the pattern {text!r}")
        return matches
    if path.is_dir():
        matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
        if not matches:
            raise CheckpointError(
                f"the folder {text} holds no checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)}); pass a "
                "glob pattern for other names"
            )
        return matches
    if path.is_file():
        return [path]
    raise CheckpointError(f"no such file or folder: {text}")


def _escape_existing_folder(pattern: str) -> str:
    """Escape the longest leading folder of ``pattern`` that exists, so ``run[seed=1]/*.pt`` works."""
    head = os.path.dirname(pattern)
    while head and not os.path.isdir(head):
        parent = os.path.dirname(head)
        if parent == head:
            return pattern
        head = parent
    if not head or not any(ch in head for ch in "*?["):
        return pattern
    return glob.escape(head) + pattern[len(head) :]


def _from_path(path: str | os.PathLike[str], step: int | None) -> Checkpoint:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if step is None:
        step = step_from_name(path)
        if step is None:
            raise CheckpointError(
                f"cannot read a training step from the file name {path.name!r}; name files like "
                "'step_1200.pt' or pass (step, path) pairs"
            )
    return Checkpoint(step=int(step), source=str(path), path=path)


def _from_pair(step: Any, value: Any, index: int) -> Checkpoint:
    if isinstance(step, bool) or not hasattr(step, "__index__"):
        raise CheckpointError(f"checkpoint #{index}: the step must be an integer, got {step!r}")
    step = int(step)
    if isinstance(value, Mapping):
        return Checkpoint(step=step, source=f"state dict #{index} (step {step})", state_dict=value)
    if isinstance(value, (str, os.PathLike)):
        return _from_path(value, step)
    raise CheckpointError(
        f"checkpoint at step {step} is a {type(value).__name__}; expected a path or a state dict"
    )


# -- reading ---------------------------------------------------------------------------------------


def load_state_dict(
    path: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    state_dict_key: str | None = None,
    state_dict_prefix: str | None = None,
) -> dict[str, Tensor]:
    """Read a checkpoint file into a state dict of CPU tensors.

    Parameters
    ----------
    path : str or PathLike
        A ``.safetensors`` file, or a file written by ``torch.save``.
    allow_pickle : bool
        Allow files that pickle arbitrary Python objects (a whole ``nn.Module``, numpy arrays, custom
        classes). Unpickling can run any code the file contains: only for files you trust. Emits an
        :class:`UnsafeCheckpointWarning`.
    state_dict_key : str, optional
        Key of the state dict inside a checkpoint dictionary (for example ``"model"``). By default the
        file's top level is used when it maps names to tensors, else the first of
        ``state_dict``, ``model_state_dict``, ``model``, ``module``, ``net``, ``weights`` that does.
    state_dict_prefix : str, optional
        Keep only the weights whose names start with this prefix, without it (``"model."`` for a
        Lightning checkpoint of a ``LightningModule`` holding the network as ``self.model``).

    Returns
    -------
    dict of str to Tensor

    Raises
    ------
    CheckpointError
        When the file is missing, corrupt or truncated, holds pickled objects without
        ``allow_pickle=True``, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        obj: Any = _load_safetensors(path)
    else:
        obj = _load_torch(path, allow_pickle)
    return strip_prefix(extract_state_dict(obj, str(path), state_dict_key), state_dict_prefix, str(path))


def strip_prefix(state_dict: dict[str, Tensor], prefix: str | None, source: str) -> dict[str, Tensor]:
    """The entries of ``state_dict`` whose names start with ``prefix``, renamed without it.

    Raises
    ------
    CheckpointError
        When no name starts with ``prefix``.
    """
    if not prefix:
        return state_dict
    kept = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not kept:
        raise CheckpointError(
            f"no weight of {source} starts with state_dict_prefix {prefix!r} (its keys: "
            f"{sorted(state_dict)[:5]}{_more(sorted(state_dict))})"
        )
    return kept


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(
            f"could not read {path}: it is not a valid safetensors file (corrupt or truncated?): {exc}"
        ) from exc


def _load_torch(path: Path, allow_pickle: bool) -> Any:
    with open(path, "rb") as fh:
        head = fh.read(2)
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):
        raise CheckpointError(
            f"could not read {path}: it is neither a torch.save archive nor a pickle: the file is corrupt "
            "or truncated (or of another format)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" not in text and "Unsupported global" not in text:
            raise CheckpointError(
                f"could not read {path}: the file is corrupt or truncated ({_first_line(exc)})"
            ) from exc
        if not allow_pickle:
            raise CheckpointError(_refused_pickle(path, text)) from exc
    except Exception as exc:
        raise CheckpointError(
            f"could not read {path}: the file is corrupt or truncated ({_first_line(exc)})"
        ) from exc
    warnings.warn(
        f"unpickling {path} with allow_pickle=True: this runs any code the file contains; use it only for "
        "files you trust",
        UnsafeCheckpointWarning,
        stacklevel=3,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"could not unpickle {path}: {_first_line(exc)}") from exc


def _refused_pickle(path: Path, text: str) -> str:
    """The error for a pickle that torch's safe loader refused, naming what it refused and why."""
    found = re.search(r"GLOBAL ([\w.]+)", text)
    blocked = re.search(r"whose module (\S+) is blocked", text)
    if found and blocked:
        return (
            f"{path} was blocked as a malicious pickle: it calls {found.group(1)} (module "
            f"{blocked.group(1)}, which torch's safe loader blocks because it can run commands or code). Do "
            "not load this file unless you made it yourself; a checkpoint needs only tensors "
            "(torch.save(model.state_dict(), ...) or safetensors)"
        )
    reason = f" (it holds {found.group(1)})" if found else ""
    if not found:
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        reason = f" ({detail.group(1).strip()})" if detail else ""
    return (
        f"{path} pickles Python objects{reason}, which safe loading (torch.load weights_only=True) "
        "refuses because unpickling can run arbitrary code. Save a state dict "
        "(torch.save(model.state_dict(), ...)) or safetensors instead, or, only if you trust the "
        "file, pass allow_pickle=True (--allow-pickle on the command line)."
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _is_state_dict(obj: Any) -> bool:
    if not isinstance(obj, Mapping) or not obj:
        return False
    return all(
        isinstance(k, str) and (isinstance(v, Tensor) or k.endswith("_extra_state")) for k, v in obj.items()
    )


def extract_state_dict(obj: Any, source: str, state_dict_key: str | None = None) -> dict[str, Tensor]:
    """Find the state dict in a loaded checkpoint object (see :func:`load_state_dict`)."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if state_dict_key is not None:
        if not isinstance(obj, Mapping) or state_dict_key not in obj:
            keys = sorted(map(str, obj)) if isinstance(obj, Mapping) else []
            raise CheckpointError(
                f"{source} has no key {state_dict_key!r}" + (f" (its keys: {keys[:10]})" if keys else "")
            )
        obj = obj[state_dict_key]
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not _is_state_dict(obj):
            raise CheckpointError(f"{source}[{state_dict_key!r}] is not a state dict of named tensors")
        return dict(obj)
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in NESTED_STATE_DICT_KEYS:
            value = obj.get(key)
            if isinstance(value, nn.Module):
                value = value.state_dict()
            if _is_state_dict(value):
                return dict(value)
        keys = sorted(map(str, obj))
        raise CheckpointError(
            f"{source} holds a dict with keys {keys[:10]} but no state dict of named tensors; pass "
            "state_dict_key= to say where the model's weights are"
        )
    raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict of named tensors")


def build_model(model_factory: Callable[[], nn.Module], state_dict: StateDict, source: str) -> nn.Module:
    """Build a model with ``model_factory()`` and load ``state_dict`` into it, checking names and shapes.

    Raises
    ------
    CheckpointError
        Naming every mismatched shape, missing and unexpected key when the checkpoint does not fit, and
        every tensor holding NaN or infinite values.
    """
    model = model_factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_factory() must return a torch.nn.Module, got {type(model).__name__}")
    expected = model.state_dict()
    problems = []
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and isinstance(v, Tensor) and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if mismatched:
        problems.append("size mismatch for " + "; ".join(mismatched[:5]) + _more(mismatched))
    missing = [k for k in expected if k not in state_dict]
    if missing:
        problems.append(f"missing keys {missing[:5]}{_more(missing)}")
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}{_more(unexpected)}")
    if problems:
        raise CheckpointError(
            f"checkpoint {source} does not fit the model built by model_factory: "
            + ", ".join(problems)
            + ". Check that model_factory builds the architecture the checkpoint was saved from."
            + _prefix_hint(list(expected), list(state_dict))
        )
    bad = [
        f"{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()} values)"
        for k, v in state_dict.items()
        if isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise CheckpointError(
            f"checkpoint {source} holds non-finite weights (NaN or infinite) in {', '.join(bad[:5])}"
            f"{_more(bad)}: the training had diverged by this step, or the file is damaged. It cannot be "
            "measured; the other checkpoints are not affected"
        )
    model.load_state_dict(state_dict)
    return model


def _prefix_hint(expected: list[str], found: list[str]) -> str:
    """A hint when the checkpoint's names are the model's under a common prefix (``model.`` in Lightning)."""
    for name in found:
        for key in expected:
            if name.endswith("." + key):
                prefix = name[: -len(key)]
                if all(prefix + k in found for k in expected):
                    return (
                        f" Its keys are the model's with the prefix {prefix!r} (a Lightning checkpoint?): "
                        f"pass state_dict_prefix={prefix!r} (--state-dict-prefix {prefix} on the command "
                        "line)"
                    )
                break
    return ""


def _more(items: list[Any]) -> str:
    return f" and {len(items) - 5} more" if len(items) > 5 else ""


def state_dict_fingerprint(state_dict: StateDict) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        digest.update(name.encode())
        if isinstance(value, Tensor):
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(tensor_bytes(value))
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def tensor_bytes(tensor: Tensor) -> bytes:
    """The raw bytes of a tensor's values (any dtype, any device)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
