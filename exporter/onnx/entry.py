"""An ``.onnx`` file edgepack did not write, made into the form every later stage takes.

Later stages (int8 calibration, the TFLite writer, runtime_check) feed one float tensor of
NCHW images and read one output. A user's file may name its input anything, have a dynamic
or fixed batch of 1, symbolic height/width, take NHWC images, or have several outputs; here
it is checked against the data and adapted without changing what it computes:

- symbolic non-batch dims are pinned to the data's size (the batch stays as it was);
- an NHWC input gets a Transpose in front, so the artifacts take NCHW like every other entry;
- with several outputs, the one chosen (``--output``, else the first) is kept, with the
  nodes it needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from exporter.errors import DataError
from exporter.models.loading import LoadedModel, select_output
from exporter.onnx.export import INPUT_NAME, copy_onnx, load_onnx, onnx_logits

LAYOUTS = ("nchw", "nhwc")


@dataclass
class OnnxEntry:
    """The adapted model and what was done to it (recorded in the report)."""

    model: onnx.ModelProto
    input_name: str
    layout: str  # the file's own input layout: "nchw" | "nhwc"
    output: str  # the output kept
    outputs: list[str]  # every output of the file
    batch: int | str  # 1, or the symbolic batch dim's name
    changed: bool  # False: the file is used as it is
    notes: list[str] = field(default_factory=list)

    def serialized(self) -> bytes:
        return self.model.SerializeToString()


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in value_info.type.tensor_type.shape.dim
    ]


def _fits(dims: list[int | str], layout: str, chw: tuple[int, int, int]) -> bool:
    c, h, w = chw
    want = (c, h, w) if layout == "nchw" else (h, w, c)
    return all(isinstance(d, str) or d == x for d, x in zip(dims[1:], want, strict=True))


def _layout(
    path: Path, name: str, dims: list[int | str], chw: tuple[int, int, int], asked: str | None
) -> str:
    c, h, w = chw
    data = f"[N,{c},{h},{w}] (NCHW) or [N,{h},{w},{c}] (NHWC)"
    if asked is not None:
        if not _fits(dims, asked, chw):
            raise DataError(
                f"{path} takes input '{name}' {dims}, which is not {asked.upper()} for the "
                f"data's {c}x{h}x{w} images"
            )
        return asked
    fits = [lay for lay in LAYOUTS if _fits(dims, lay, chw)]
    if not fits:
        raise DataError(f"{path} takes input '{name}' {dims} but the data is {data}")
    if len(fits) == 2:
        raise DataError(
            f"{path}: input '{name}' {dims} could be NCHW or NHWC for the data's {c}x{h}x{w} "
            "images; say which with --layout nchw or --layout nhwc"
        )
    return fits[0]


def _keep_output(graph: onnx.GraphProto, keep: str) -> None:
    """Drop every graph output but ``keep``, then the nodes and initializers nothing needs."""
    chosen = [o for o in graph.output if o.name == keep]
    del graph.output[:]
    graph.output.extend(chosen)
    needed = {keep}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(_node_inputs(node))
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _node_inputs(node: onnx.NodeProto) -> set[str]:
    """The node's inputs, with the outer-scope names its subgraphs (If, Loop) read."""
    names = {n for n in node.input if n}
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            for inner in sub.node:
                names |= _node_inputs(inner)
    return names


def _nhwc_to_nchw_input(graph: onnx.GraphProto, name: str, nchw: list[int | str]) -> None:
    """Give the graph an NCHW input of the same name, transposed to the NHWC tensor it read."""
    inner = f"{name}__nhwc"
    for node in graph.node:
        for i, n in enumerate(node.input):
            if n == name:
                node.input[i] = inner
    graph.node.insert(0, onnx.helper.make_node("Transpose", [name], [inner], perm=[0, 2, 3, 1]))
    _set_dims(next(i for i in graph.input if i.name == name), nchw)


def _set_dims(value_info: onnx.ValueInfoProto, dims: list[int | str]) -> None:
    shape = value_info.type.tensor_type.shape
    for dim, value in zip(shape.dim, dims, strict=True):
        if isinstance(value, str):
            dim.dim_param = value
        else:
            dim.dim_value = value


def onnx_entry(
    path: str | Path,
    chw: tuple[int, int, int],
    *,
    output: str | None = None,
    layout: str | None = None,
) -> OnnxEntry:
    """Check ``path`` against the data's ``chw`` images and adapt it (see the module's doc).

    Every refusal is a one-line DataError naming the file, the input or output, and the fix.
    """
    path = Path(path)
    model = load_onnx(path)
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1:
        names = ", ".join(f"'{i.name}'" for i in inputs) or "none"
        raise DataError(f"{path} has {len(inputs)} inputs ({names}); edgepack feeds one image")
    inp = inputs[0]
    name, dims = inp.name, _dims(inp)
    if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(inp.type.tensor_type.elem_type).lower()
        raise DataError(f"{path}: input '{name}' is {kind}; edgepack feeds float32 images")
    if len(dims) != 4:
        raise DataError(
            f"{path} takes input '{name}' {dims}; edgepack feeds images [N,C,H,W] or [N,H,W,C]"
        )
    lay = _layout(path, name, dims, chw, layout)
    batch = dims[0]
    if isinstance(batch, int) and batch != 1:
        raise DataError(
            f"{path}: input '{name}' has a fixed batch of {batch}; edgepack runs one image at a "
            "time: export it with batch 1 or a dynamic batch"
        )
    outputs = [o.name for o in graph.output]
    if output is not None and output not in outputs:
        raise DataError(
            f"--output {output}: {path} has no output '{output}' (outputs: {', '.join(outputs)})"
        )
    chosen = output or outputs[0]
    notes = []
    c, h, w = chw
    pinned = [batch, c, h, w] if lay == "nchw" else [batch, h, w, c]
    changed = pinned != dims or lay == "nhwc" or len(outputs) > 1
    if len(outputs) > 1:
        _keep_output(graph, chosen)
        notes.append(f"output '{chosen}' of {', '.join(outputs)}")
    if pinned != dims:
        _set_dims(inp, pinned)
        notes.append(f"input dims {dims} pinned to {pinned}")
    if lay == "nhwc":
        _nhwc_to_nchw_input(graph, name, [batch, c, h, w])
        notes.append("NHWC input: a Transpose from NCHW put in front")
    if changed:
        # Shapes inferred with the old symbolic dims may contradict the pinned ones.
        del graph.value_info[:]
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
    return OnnxEntry(model, name, lay, chosen, outputs, batch, changed, notes)


def _logits(entry: OnnxEntry, x: np.ndarray, source: Path) -> np.ndarray:
    """The kept output on ``x`` (NCHW), which must be class logits [N, classes]."""
    logits = onnx_logits(entry.serialized(), x)
    if logits.ndim != 2 or logits.shape[0] != len(x):
        others = [o for o in entry.outputs if o != entry.output]
        hint = f"; choose another with --output ({', '.join(others)})" if others else ""
        raise DataError(
            f"{source}: output '{entry.output}' has shape {list(logits.shape)}; expected class "
            f"logits [N, classes]{hint}"
        )
    return logits


@dataclass
class Entry:
    """How the model given to ``--model`` enters the pipeline, for every kind of model."""

    input_name: str
    input_layout: str | None = None  # an .onnx model's own layout; None for torch (NCHW)
    output: str | None = None  # the output kept when there are several
    outputs: list[str] | None = None
    onnx: OnnxEntry | None = None
    source: Path | None = None  # the .onnx file
    notes: list[str] = field(default_factory=list)  # what loading changed (torch models)

    def facts(self) -> dict:
        """The report's ModelInfo fields."""
        adapted = self.onnx.notes if self.onnx is not None and self.onnx.changed else self.notes
        return {
            "input_name": self.input_name,
            "input_layout": self.input_layout,
            "output": self.output,
            "outputs": self.outputs,
            "adapted": adapted or None,
        }

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The reference logits of an .onnx model (the kept output, NCHW input)."""
        return _logits(self.onnx, x, self.source)


def prepare_entry(
    loaded: LoadedModel,
    chw: tuple[int, int, int],
    *,
    output: str | None = None,
    layout: str | None = None,
) -> tuple[LoadedModel, Entry]:
    """The model narrowed to one logits output, and an .onnx model checked against the data
    and adapted; bad ``--output`` or ``--layout`` is a one-line error."""
    if layout is not None and layout not in LAYOUTS:
        raise DataError(f"--layout {layout}: must be nchw or nhwc")
    if loaded.is_onnx:
        adapted = onnx_entry(loaded.onnx_path, chw, output=output, layout=layout)
        several = len(adapted.outputs) > 1
        return loaded, Entry(
            adapted.input_name,
            adapted.layout,
            adapted.output if several else None,
            adapted.outputs if several else None,
            adapted,
            loaded.onnx_path,
        )
    if layout is not None:
        raise DataError(
            f"--layout {layout}: only for an .onnx model; a torch model takes NCHW images"
        )
    module, chosen, names = select_output(loaded.module, chw, output)
    return (
        dataclasses.replace(loaded, module=module),
        Entry(INPUT_NAME, None, chosen, names or None, notes=list(loaded.notes)),
    )


def write_entry(entry: Entry, dest: Path | str) -> None:
    """model.fp32.onnx of an .onnx entry: the adapted model as one self-contained file
    (external data inlined), or the user's own bytes when nothing had to change."""
    if not entry.onnx.changed:
        copy_onnx(entry.source, dest)
        return
    onnx.save_model(entry.onnx.model, str(dest))
