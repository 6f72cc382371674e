"""TFLite resize: ONNX Resize -> RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR on NHWC.

Only the ONNX coordinate modes with an exact TFLite twin are accepted:
nearest + asymmetric + floor (torch "nearest"), nearest + half_pixel + round_prefer_ceil
(torch "nearest-exact"), linear + half_pixel / pytorch_half_pixel (half_pixel_centers),
linear + align_corners and linear + asymmetric.
"""

from __future__ import annotations

import onnx

from exporter.tflite import layout as L
from exporter.tflite.context import ConversionContext
from exporter.tflite.registry import converter

# (mode, coordinate_transformation_mode, nearest_mode or None) -> (op, align_corners, half_pixel_centers)
_MODES = {
    ("nearest", "asymmetric", "floor"): ("RESIZE_NEAREST_NEIGHBOR", False, False),
    ("nearest", "half_pixel", "round_prefer_ceil"): ("RESIZE_NEAREST_NEIGHBOR", False, True),
    ("nearest", "pytorch_half_pixel", "round_prefer_ceil"): (
        "RESIZE_NEAREST_NEIGHBOR",
        False,
        True,
    ),
    ("linear", "half_pixel", None): ("RESIZE_BILINEAR", False, True),
    ("linear", "pytorch_half_pixel", None): ("RESIZE_BILINEAR", False, True),
    ("linear", "align_corners", None): ("RESIZE_BILINEAR", True, False),
    ("linear", "asymmetric", None): ("RESIZE_BILINEAR", False, False),
}


def _mode_key(node: onnx.NodeProto, ctx: ConversionContext) -> tuple[str, str, str | None]:
    a = ctx.attrs(node)
    mode = a.get("mode", "nearest")
    coord = a.get("coordinate_transformation_mode", "half_pixel")
    return mode, coord, a.get("nearest_mode", "round_prefer_floor") if mode == "nearest" else None


def _check_resize(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    a = ctx.attrs(node)
    in_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if len(in_shape) != 4:
        return "only rank-4 (NCHW image) input is supported"
    if in_shape[:2] != out_shape[:2]:
        return "only the spatial dims (H, W) may be resized"
    if int(a.get("antialias", 0)):
        return "antialias=1 is not supported"
    if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return f"keep_aspect_ratio_policy={a['keep_aspect_ratio_policy']} is not supported"
    key = _mode_key(node, ctx)
    if key not in _MODES:
        mode, coord, nearest = key
        extra = f", nearest_mode={nearest}" if nearest else ""
        return f"mode={mode}, coordinate_transformation_mode={coord}{extra} has no exact TFLite equivalent"
    return None


@converter(
    "Resize",
    emits=(
        "RESIZE_NEAREST_NEIGHBOR (nearest: asymmetric+floor, half_pixel+round_prefer_ceil) / "
        "RESIZE_BILINEAR (linear: half_pixel, pytorch_half_pixel, align_corners, asymmetric); spatial dims only"
    ),
    check=_check_resize,
)
def convert_resize(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    op, align_corners, half_pixel = _MODES[_mode_key(node, ctx)]
    x = ctx.tensor(node.input[0], L.NHWC)
    y = ctx.output(node.output[0], L.NHWC)
    size = ctx.const_tensor(f"{y}_size", list(ctx.shape(node.output[0])[2:]), "int32")
    ctx.emit(op, [x, size], [y], align_corners=align_corners, half_pixel_centers=half_pixel)
