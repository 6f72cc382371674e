"""Build a torch module (or point at an ONNX file) from a ``--model`` spec and weights."""

from __future__ import annotations

import collections
import contextlib
import copy
import importlib
import importlib.util
import inspect
import io
import json
import logging
import os
import pickle
import sys
import types
import warnings
import zipfile
from dataclasses import dataclass, field
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
    notes: list[str] = field(default_factory=list)  # what loading changed, for the report

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
    target = spec.rpartition(":")[0]
    with _running_user_file(Path(target) if target.endswith(".py") else None) as held:
        try:
            module = factory(**kwargs)
        except (SystemExit, _UserExit) as exc:
            raise _exit_error(f"model factory '{spec}'", exc, held) from None
        except Exception as exc:  # the user's code: any failure is reported, not re-raised
            raise ModelLoadError(
                f"model factory '{spec}' raised {type(exc).__name__}: {exc}"
            ) from None
    if not isinstance(module, nn.Module):
        raise ModelLoadError(
            f"model factory '{spec}' returned {type(module).__name__}, not a torch.nn.Module"
        )
    return module


class _UserExit(BaseException):
    """Raised in place of ``os._exit`` while a model file runs: the process must not vanish.

    A BaseException, like SystemExit, so a model file's ``except Exception`` cannot swallow it.
    """

    def __init__(self, code: object):
        super().__init__(code)
        self.code = code


def _trapped_os_exit(code: int) -> None:
    raise _UserExit(code)


@contextlib.contextmanager
def _running_user_file(path: Path | None):
    """Run a model file as a script would see itself, and keep edgepack's process state.

    While the file is imported and its factory called: ``sys.argv`` is ``[file]`` (a file that
    parses arguments must not see edgepack's), its folder leads ``sys.path`` (it may import the
    modules beside it), ``os._exit`` raises instead of ending the process (a Python-level call
    only: a C extension that exits cannot be stopped in-process), and stderr is held so an
    argparse usage is not printed as edgepack's. All of it is restored afterwards; what the
    file printed to stderr is passed on only when it succeeded (a failure is one error line).
    """
    saved_argv, saved_path, saved_exit = sys.argv, list(sys.path), os._exit
    held = io.StringIO()
    if path is not None:
        sys.argv = [str(path)]
        sys.path.insert(0, str(path.resolve().parent))
    os._exit = _trapped_os_exit
    try:
        with contextlib.redirect_stderr(held):
            yield held
    finally:
        sys.argv, os._exit = saved_argv, saved_exit
        sys.path[:] = saved_path
    sys.stderr.write(held.getvalue())


def _exit_error(where: str, exc: BaseException, held: io.StringIO) -> ModelLoadError:
    call = "os._exit" if isinstance(exc, _UserExit) else "sys.exit"
    said = [ln.strip() for ln in held.getvalue().splitlines() if ln.strip()]
    detail = f"; it said: {said[-1]}" if said else ""
    return ModelLoadError(
        f"{where} exited with {call}({exc.code!r}): a model file must define the model, not "
        f"exit or parse command-line arguments when imported{detail}"
    )


def _exec_user_file(path: Path):
    if not path.is_file():
        raise InputFileError(f"model file {path} not found")
    name = f"edgepack_user_{path.stem}"
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module
    with _running_user_file(path) as held:
        try:
            mod_spec.loader.exec_module(module)
        except (SystemExit, _UserExit) as exc:
            sys.modules.pop(name, None)
            raise _exit_error(f"importing {path}", exc, held) from None
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ModelLoadError(f"importing {path} raised {type(exc).__name__}: {exc}") from None
    return module


def _import_factory(spec: str):
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ModelLoadError(f"model spec '{spec}' must be file.py:Factory or module:Factory")
    if target.endswith(".py"):
        module = _exec_user_file(Path(target))
    else:
        with _running_user_file(None) as held:
            try:
                module = importlib.import_module(target)
            except ImportError as exc:
                raise ModelLoadError(f"cannot import module '{target}': {exc}") from None
            except (SystemExit, _UserExit) as exc:
                raise _exit_error(f"importing module '{target}'", exc, held) from None
    if not hasattr(module, attr):
        raise ModelLoadError(f"'{attr}' not found in {target}")
    return getattr(module, attr)


_NO_CODE = "only torch.export programs of tensors are loaded; code is never run"


def _refuse_code_in_pt2(path: Path, data: bytes) -> None:
    """Refuse the parts of a .pt2 that torch.export.load would run as code.

    torch reads "opaque" and "custom" object constants with ``pickle.loads`` and the TorchScript
    unpickler, and loads any AOTInductor folder as a shared library; none of it can be made safe,
    so an archive that has them is refused before torch sees it. (Pickled tensors are loaded
    weights-only, see :func:`_weights_only_loads`.)
    """
    from torch.export.pt2_archive import constants as pt2

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = {n.split("/", 1)[-1]: n for n in archive.namelist()}
            if any(n.startswith(pt2.AOTINDUCTOR_DIR) for n in names):
                raise InputFileError(
                    f"{path}: refused: it holds compiled native code (AOTInductor); {_NO_CODE}"
                )
            for name, full in names.items():
                if name.startswith(pt2.CONSTANTS_DIR) and name.endswith("constants_config.json"):
                    _refuse_pickled_objects(path, archive.read(full))
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not an archive at all: torch.export.load says so in its own words


def _refuse_pickled_objects(path: Path, config: bytes) -> None:
    from torch.export.pt2_archive import constants as pt2

    entries = json.loads(config).get("config", {})
    objects = sorted(
        fqn
        for fqn, meta in entries.items()
        if isinstance(meta, dict)
        and str(meta.get("path_name", "")).startswith(
            (pt2.OPAQUE_OBJ_FILENAME_PREFIX, pt2.CUSTOM_OBJ_FILENAME_PREFIX)
        )
    )
    if objects:
        raise InputFileError(
            f"{path}: refused: constant(s) {', '.join(objects)} are pickled objects; {_NO_CODE}"
        )


@contextlib.contextmanager
def _weights_only_loads():
    """Every torch.load in the block runs weights-only, even where the caller says otherwise.

    torch.export.load reads pickled weights and constants (``use_pickle`` in the archive's
    config), legacy weight files and sample inputs with ``torch.load(weights_only=False)``;
    torch's documented TORCH_FORCE_WEIGHTS_ONLY_LOAD overrides that explicit argument.
    """
    saved = {
        k: os.environ.get(k)
        for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    }
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _caused_by_unpickling(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, pickle.UnpicklingError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _load_exported_program(path: Path, notes: list[str]) -> nn.Module:
    if not path.is_file():
        raise InputFileError(f"model file {path} not found")
    # Read once: the bytes checked for code are the bytes torch loads.
    data = path.read_bytes()
    _refuse_code_in_pt2(path, data)
    # torch.export.load logs the whole traceback of a bad archive at WARNING before it raises;
    # the raise is reported below in one line, so the log is silenced for the call.
    log = logging.getLogger("torch.export")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with _weights_only_loads(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(io.BytesIO(data))
    except Exception as exc:  # torch raises many types for a bad archive
        if _caused_by_unpickling(exc):
            raise InputFileError(
                f"{path}: refused: a pickled entry is not plain tensor data; {_NO_CODE}"
            ) from None
        raise InputFileError(
            f"{path}: not a readable torch.export program ({type(exc).__name__})"
        ) from None
    finally:
        log.setLevel(level)
    _refuse_non_finite(path, dict(program.state_dict), "weights")
    module = program.module()
    if _to_eval_mode(module):
        notes.append(
            "the program was exported in training mode: its BatchNorm/Dropout nodes were set "
            "to eval mode"
        )
    example = [a for a in program.example_inputs[0] if isinstance(a, torch.Tensor)]
    if len(example) == 1 and example[0].shape[0] == 1:
        try:
            module(torch.cat([example[0], example[0]]))
        except Exception:  # a static batch of 1: guards refuse anything else
            return _PerSample(module)
    return module


# (op, index of its `training` argument): what BatchNorm and Dropout become in torch.export's IR.
_TRAINING_ARGS = {
    "aten.batch_norm.default": 5,
    "aten.native_batch_norm.default": 5,
    "aten.dropout.default": 2,
    "aten.feature_dropout.default": 2,
    "aten.alpha_dropout.default": 2,
}


def _to_eval_mode(module: nn.Module) -> int:
    """Make a program exported in training mode compute as ``eval()`` would; returns the nodes
    changed.

    An exported graph's mode is fixed (``.eval()`` on it raises), and a program exported
    without ``model.eval()`` normalises with each batch's statistics and drops activations at
    random: a torch model is validated and exported in eval mode, so a program is too.
    """
    graph = getattr(module, "graph", None)
    if graph is None:
        return 0
    changed = 0
    for node in graph.nodes:
        index = _TRAINING_ARGS.get(str(node.target)) if node.op == "call_function" else None
        if index is not None and len(node.args) > index and node.args[index] is True:
            node.args = (*node.args[:index], False, *node.args[index + 1 :])
            changed += 1
    if changed:
        module.recompile()
    return changed


def _refuse_non_finite(path: Path, tensors: dict, what: str) -> None:
    bad = [
        k
        for k, v in tensors.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(v.isfinite().all())
    ]
    if bad:
        raise ModelLoadError(
            f"{path}: {what} not finite (NaN or Inf) in {', '.join(bad)}; such a model "
            "computes nothing meaningful (was its training diverging?)"
        )


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
        outs = [self.program(x[i : i + 1]) for i in range(x.shape[0])]
        first = outs[0]
        if isinstance(first, dict):
            return {k: torch.cat([o[k] for o in outs]) for k in first}
        if isinstance(first, tuple | list):
            return type(first)(torch.cat([o[k] for o in outs]) for k in range(len(first)))
        return torch.cat(outs)


def _output_names(out) -> list[str]:
    """What ``--output`` may name in a model's output: dict keys, namedtuple fields, else the
    positions of a tuple or list ("0", "1", ...)."""
    if isinstance(out, dict):
        return [str(k) for k in out]
    fields = getattr(out, "_fields", None)
    return list(fields) if fields else [str(i) for i in range(len(out))]


def _pick(out, name: str):
    if isinstance(out, dict):
        return next(v for k, v in out.items() if str(k) == name)
    fields = getattr(out, "_fields", None)
    return out[list(fields).index(name) if fields else int(name)]


class SelectOutput(nn.Module):
    """One tensor of a model whose forward returns a tuple, list, namedtuple or dict.

    The wrapped model is ``self.model``: its parameters are those of the user's model.
    """

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        self.model = model
        self.output = output

    def train(self, mode: bool = True):
        self.training = mode
        set_mode(self.model, mode)
        return self

    def forward(self, x):
        return _pick(self.model(x), self.output)


@torch.no_grad()
def select_output(
    module: nn.Module, chw: tuple[int, int, int], output: str | None
) -> tuple[nn.Module, str | None, list[str]]:
    """The model as one logits tensor: a tuple/dict output is narrowed to ``output``, else to
    its first tensor. Returns the module, the output kept (None for a single tensor) and every
    output's name. A model that rejects the input is left to the caller's fit check."""
    try:
        out = module(torch.zeros(1, *chw))
    except Exception:  # the pipeline's fit check reports it in the user's terms
        return module, None, []
    if isinstance(out, torch.Tensor):
        if output is not None:
            raise ModelLoadError(f"--output {output}: the model returns a single tensor")
        return module, None, []
    if not isinstance(out, tuple | list | dict) or not out:
        return module, None, []  # the fit check says what the model returned
    names = _output_names(out)
    if output is not None and output not in names:
        raise ModelLoadError(
            f"--output {output}: the model's outputs are {', '.join(names)}; "
            f"'{output}' is not one of them"
        )
    tensors = [n for n in names if isinstance(_pick(out, n), torch.Tensor)]
    chosen = output or (tensors[0] if tensors else names[0])
    return SelectOutput(module, chosen), chosen, names


def load_model(
    spec: str, in_channels: int, image_size: tuple[int, int], num_classes: int, seed: int = 0
) -> LoadedModel:
    """Resolve ``spec``; sizes come from the data so built-ins fit any data set. Built-ins and
    factories are built with torch's generator seeded by ``seed`` (and restored after): a model
    without --weights has the same initial weights on every run, so its figures repeat and its
    export is found in the cache."""
    if spec in BUILTIN:
        with _seeded(seed):
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
        notes: list[str] = []
        module = _load_exported_program(path, notes)
        return LoadedModel(spec, module, notes=notes)
    if ":" not in spec:
        known = ", ".join(BUILTIN)
        raise ModelLoadError(
            f"unknown model '{spec}' (built-in: {known}; or file.py:Factory, "
            "module:Factory, .pt2, .onnx)"
        )
    factory = _import_factory(spec)
    with _seeded(seed):
        module = _call_factory(factory, spec, in_channels, image_size, num_classes)
    return LoadedModel(spec, module)


@contextlib.contextmanager
def _seeded(seed: int):
    """torch's CPU generator seeded inside, its state restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# The only globals a plain state_dict pickle names; everything else is refused by name.
_STATE_DICT_GLOBALS = {
    "collections.OrderedDict": collections.OrderedDict,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Python's unpickler (every protocol) allowed to import only :data:`_STATE_DICT_GLOBALS`.

    torch's weights-only unpickler stops at protocol 4/5 opcodes (FRAME, MEMOIZE); pickle runs
    code only through the callables ``find_class`` hands out, so this allowlist keeps the same
    guarantee for the few globals a state_dict needs. (torch resolves storage types itself.)
    """

    def find_class(self, module: str, name: str):
        found = _STATE_DICT_GLOBALS.get(f"{module}.{name}")
        if found is None:
            raise pickle.UnpicklingError(f"it imports {module}.{name}")
        return found


def _state_dict_pickle_module() -> types.ModuleType:
    mod = types.ModuleType("edgepack_state_dict_pickle")
    mod.Unpickler = _StateDictUnpickler
    mod.load = lambda f, **kw: _StateDictUnpickler(f, **kw).load()
    return mod


def _torch_load(path: Path):
    """torch.load weights-only; a newer pickle protocol goes through the allowlisted unpickler.

    torch warns about any protocol but 2 on stderr before it loads; the outcome is reported
    here, so the warning is not shown.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected pickle protocol")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "Unsupported operand" not in str(exc):
                raise
        return torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_state_dict_pickle_module()
        )


def _refused(path: Path, exc: pickle.UnpicklingError) -> InputFileError:
    # torch's message is a paragraph; the line naming the blocked global/opcode is what matters.
    lines = [ln.strip() for ln in str(exc).splitlines()]
    detail = [ln for ln in lines if "GLOBAL" in ln or ln.startswith(("Unsupported", "it imports"))]
    why = detail[0] if detail else "not a plain state_dict"
    how = (
        "(weights_only=True)" if "GLOBAL" in why or "Unsupported" in why else " (state_dict types)"
    )
    return InputFileError(
        f"{path}: refused by torch.load{how}: {why} (only state_dicts of tensors are loaded; code is never "
        "run; save weights with torch.save(model.state_dict(), path))"
    )


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a state_dict without running code from it: a pickle with code in it is refused."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"weights file {path} not found")
    try:
        state = _torch_load(path)
    except pickle.UnpicklingError as exc:
        raise _refused(path, exc) from None
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
    _refuse_non_finite(path, state, "weights")
    module.load_state_dict(state, strict=True)
