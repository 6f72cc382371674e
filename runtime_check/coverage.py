"""Which ops of a LiteRT interpreter ran outside its delegate (XNNPACK), as measured.

LiteRT replaces each delegated partition by one DELEGATE node appended after the model's own
nodes, and keeps the replaced nodes listed. An original node is inside a partition when one
of its outputs leaves the partition (a DELEGATE node's output), or when every reader of its
outputs is inside one too and none of them is a DELEGATE node's input or a model output;
walking the nodes backwards (they are in execution order) settles each from its readers.
"""

from __future__ import annotations


def ops_outside_delegate(interpreter) -> list[str] | None:
    """Op names (one per node, execution order) that the interpreter runs on its own kernels
    rather than in a DELEGATE partition; ``[]`` when the delegate took the whole graph, None
    when the interpreter does not expose its nodes."""
    try:
        nodes = interpreter._get_ops_details()  # the only node listing the Python API has
        outputs = {d["index"] for d in interpreter.get_output_details()}
    except (AttributeError, RuntimeError, ValueError):
        return None
    delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
    own = [n for n in nodes if n["op_name"] != "DELEGATE"]
    leaving = {int(t) for d in delegates for t in d["outputs"]}
    entering = {int(t) for d in delegates for t in d["inputs"]}
    readers: dict[int, list[int]] = {}
    for i, n in enumerate(own):
        for t in n["inputs"]:
            readers.setdefault(int(t), []).append(i)
    inside = [False] * len(own)
    for i in range(len(own) - 1, -1, -1):
        outs = [int(t) for t in own[i]["outputs"]]
        if any(t in leaving for t in outs):
            inside[i] = True
        elif any(t in entering or t in outputs for t in outs):
            inside[i] = False
        else:
            used = [r for t in outs for r in readers.get(t, [])]
            inside[i] = bool(used) and all(inside[r] for r in used)
    return [n["op_name"] for n, held in zip(own, inside, strict=True) if not held]
