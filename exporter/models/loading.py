"""Build a torch module (or point at an ONNX file) from a ``--model`` spec and weights."""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import inspect
import logging
import pickle
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from exporter.errors import InputFileError, ModelLoadError
from exporter.models.zoo import BUILTIN


@dataclass
class LoadedModel:
    spec: str
    module: nn.Module | None  # None when the pipeline enters at ONNX
    onnx_path: Path | None = None

    @property
    def is_onnx(self) -> bool:
        return self.onnx_path is not None


def copy_model(module: nn.Module) -> nn.Module:
    """A deep copy to compress or fine-tune, leaving the user's model as it was loaded.

    Copying a ``torch.export`` program's GraphModule makes torch 2.13 warn about its own pytree
    ``LeafSpec`` (a FutureWarning from torch internals, nothing the user can act on), so that
    one warning is silenced here rather than printed on every `edgepack run --model x.pt2`.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
            category=FutureWarning,
        )
        return copy.deepcopy(module)


def set_mode(module: nn.Module, training: bool) -> nn.Module:
    """train()/eval(), except on torch.export programs, whose mode was fixed when exported."""
    with contextlib.suppress(NotImplementedError):
        module.train(training)
    return module


def _call_factory(
    factory, spec: str, in_channels: int, image_size: tuple[int, int], num_classes: int
) -> nn.Module:
    """Call the factory, passing only the sizing arguments its signature names."""
    offered = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes}
    try:
        params = inspect.signature(factory).parameters
        accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in offered.items() if accepts_kwargs or k in params}
    except (TypeError, ValueError):
        kwargs = {}
    try:
        module = factory(**kwargs)
    except Exception as exc:  # the user's code: any failure is reported, not re-raised
        raise ModelLoadError(f"model factory '{spec}' raised {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ModelLoadError(
            f"model factory '{spec}' returned {type(module).__name__}, not a torch.nn.Module"
        )
    return module


def _import_factory(spec: str):
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ModelLoadError(f"model spec '{spec}' must be file.py:Factory or module:Factory")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise InputFileError(f"model file {path} not found")
        name = f"edgepack_user_{path.stem}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ModelLoadError(f"importing {path} raised {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelLoadError(f"cannot import module '{target}': {exc}") from None
    if not hasattr(module, attr):
        raise ModelLoadError(f"'{attr}' not found in {target}")
    return getattr(module, attr)


def _load_exported_program(path: Path) -> nn.Module:
    if not path.is_file():
        raise InputFileError(f"model file {path} not found")
    # torch.export.load logs the whole traceback of a bad archive at WARNING before it raises;
    # the raise is reported below in one line, so the log is silenced for the call.
    log = logging.getLogger("torch.export")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for a bad archive
        raise InputFileError(
            f"{path}: not a readable torch.export program ({type(exc).__name__})"
        ) from None
    finally:
        log.setLevel(level)
    module = program.module()
    example = [a for a in program.example_inputs[0] if isinstance(a, torch.Tensor)]
    if len(example) == 1 and example[0].shape[0] == 1:
        try:
            module(torch.cat([example[0], example[0]]))
        except Exception:  # a static batch of 1: guards refuse anything else
            return _PerSample(module)
    return module


class _PerSample(nn.Module):
    """Runs a program exported with a static batch of 1 on any batch, one image at a time."""

    def __init__(self, program_module: nn.Module):
        super().__init__()
        self.program = program_module

    def train(self, mode: bool = True):
        # The exported graph's mode was fixed at export; only this wrapper's flag changes.
        self.training = mode
        return self

    def forward(self, x):
        return torch.cat([self.program(x[i : i + 1]) for i in range(x.shape[0])])


def load_model(
    spec: str, in_channels: int, image_size: tuple[int, int], num_classes: int
) -> LoadedModel:
    """Resolve ``spec``; sizes come from the data so built-ins fit any data set."""
    if spec in BUILTIN:
        module = BUILTIN[spec](
            in_channels=in_channels, image_size=image_size, num_classes=num_classes
        )
        return LoadedModel(spec, module)
    path = Path(spec)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise InputFileError(f"model file {path} not found")
        return LoadedModel(spec, None, path)
    if path.suffix == ".pt2":
        return LoadedModel(spec, _load_exported_program(path))
    if ":" not in spec:
        known = ", ".join(BUILTIN)
        raise ModelLoadError(
            f"unknown model '{spec}' (built-in: {known}; or file.py:Factory, "
            "module:Factory, .pt2, .onnx)"
        )
    factory = _import_factory(spec)
    return LoadedModel(spec, _call_factory(factory, spec, in_channels, image_size, num_classes))


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a state_dict with ``weights_only=True``: a pickle with code in it is refused."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"weights file {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a paragraph; the line naming the blocked global/opcode is what matters.
        detail = [
            ln.strip()
            for ln in str(exc).splitlines()
            if "GLOBAL" in ln or ln.strip().startswith("Unsupported")
        ]
        why = detail[0] if detail else "not a plain state_dict"
        raise InputFileError(
            f"{path}: refused by torch.load(weights_only=True): {why} "
            "(only state_dicts of tensors are loaded; code is never run)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputFileError(
            f"{path}: not a readable torch weights file ({type(exc).__name__})"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path}: expected a state_dict of tensors")
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if wrong:
        problems.append(
            "wrong shapes: "
            + ", ".join(f"{k} {list(state[k].shape)} vs model {list(own[k].shape)}" for k in wrong)
        )
    if problems:
        raise ModelLoadError(f"{path} does not match the model: {'; '.join(problems)}")
    module.load_state_dict(state, strict=True)
