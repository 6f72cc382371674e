"""Quantization parameters for the int8 TFLite path: the single home of every scale/zero-point rule.

Conventions follow TFLite's int8 spec: weights are symmetric int8 in [-127, 127] with zero point 0,
per output channel along the filter's channel axis (0 for OHWI conv / FC, 3 for depthwise 1HWO);
biases are int32 with scale ``s_in * s_w[c]`` and zero point 0; activations are per-tensor
asymmetric int8. Op modules and passes call these helpers instead of doing the arithmetic inline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from exporter.tflite.ir import Tensor

INT8_MIN, INT8_MAX = -128, 127
INT16_MIN, INT16_MAX = -32768, 32767
_RANGES = {"int8": (INT8_MIN, INT8_MAX), "uint8": (0, 255), "int16": (INT16_MIN, INT16_MAX)}
WEIGHT_QMAX = 127  # symmetric weights leave -128 unused so that -w is representable

#: Filter axis that holds the output channel, per TFLite op (TFLite layouts, not ONNX).
WEIGHT_CHANNEL_AXIS = {
    "CONV_2D": 0,  # OHWI
    "FULLY_CONNECTED": 0,  # [out, in]
    "TRANSPOSE_CONV": 0,  # OHWI
    "DEPTHWISE_CONV_2D": 3,  # 1HWO
}


@dataclass(frozen=True)
class QParams:
    """real = (q - zero_point) * scale; several entries mean per-channel along ``axis``."""

    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    axis: int = 0

    @classmethod
    def per_tensor(cls, scale: float, zero_point: int) -> QParams:
        return cls((float(scale),), (int(zero_point),))

    @property
    def scale(self) -> float:
        if len(self.scales) != 1:
            raise ValueError("per-channel parameters have no single scale")
        return self.scales[0]

    @property
    def zero_point(self) -> int:
        return self.zero_points[0]

    def same_as(self, other: QParams | None) -> bool:
        """Equal up to float32 rounding (ONNX stores scales as float32)."""
        if other is None or len(self.scales) != len(other.scales):
            return False
        return self.zero_points == other.zero_points and bool(
            np.allclose(self.scales, other.scales, rtol=1e-6, atol=0.0)
        )


#: Output parameters TFLite's int8 kernels require (quantization spec); the kernels refuse others.
FIXED_OUTPUT = {
    "SOFTMAX": QParams.per_tensor(1.0 / 256.0, -128),
    "LOGISTIC": QParams.per_tensor(1.0 / 256.0, -128),
    "TANH": QParams.per_tensor(1.0 / 128.0, 0),
}

#: The same for int16 activations (16x8 spec: symmetric, zero point 0, full int16 range).
FIXED_OUTPUT_INT16 = {
    "SOFTMAX": QParams.per_tensor(1.0 / 32768.0, 0),
    "LOGISTIC": QParams.per_tensor(1.0 / 32768.0, 0),
    "TANH": QParams.per_tensor(1.0 / 32768.0, 0),
}

#: A raw uint8 camera pixel p, read as the value p itself.
RAW_PIXEL_UINT8 = QParams.per_tensor(1.0, 0)


def from_onnx(scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1) -> QParams:
    """Parameters of an ONNX QuantizeLinear / DequantizeLinear (scale, optional zero point)."""
    scales = np.asarray(scale, np.float64).reshape(-1)
    zps = (
        np.zeros(scales.shape, np.int64)
        if zero_point is None
        else np.broadcast_to(np.asarray(zero_point, np.int64).reshape(-1), scales.shape)
    )
    # ONNX's default axis is 1 even for one scale; TFLite wants 0 there, and XNNPACK refuses
    # to delegate an int8 op whose per-tensor activations say otherwise.
    axis = int(axis) if scales.size > 1 else 0
    return QParams(tuple(float(s) for s in scales), tuple(int(z) for z in zps), axis)


def onnx_zero_point_dtype(zero_point: np.ndarray | None) -> str:
    return (
        "uint8" if zero_point is not None and np.asarray(zero_point).dtype == np.uint8 else "int8"
    )


def as_int8(params: QParams, dtype: str) -> QParams:
    """uint8 parameters re-expressed for int8 storage: the same reals with q shifted by -128."""
    if dtype == "int8":
        return params
    return QParams(params.scales, tuple(z - 128 for z in params.zero_points), params.axis)


def params_of(tensor: Tensor) -> QParams | None:
    if tensor.scales is None:
        return None
    return QParams(
        tuple(float(s) for s in tensor.scales),
        tuple(int(z) for z in (tensor.zero_points or [0] * len(tensor.scales))),
        tensor.quantized_dimension,
    )


def set_params(tensor: Tensor, params: QParams | None) -> None:
    if params is None:
        tensor.scales, tensor.zero_points, tensor.quantized_dimension = None, None, 0
        return
    tensor.scales = list(params.scales)
    tensor.zero_points = list(params.zero_points)
    tensor.quantized_dimension = params.axis if len(params.scales) > 1 else 0


def quantize_array(x: np.ndarray, params: QParams, dtype: str = "int8") -> np.ndarray:
    """Round-half-to-even like ONNX QuantizeLinear and TFLite's reference QUANTIZE."""
    lo, hi = _RANGES[dtype]
    shape = [1] * np.ndim(x)
    if len(params.scales) > 1:
        shape[params.axis] = -1
    scale = np.asarray(params.scales, np.float64).reshape(shape or [-1])
    zp = np.asarray(params.zero_points, np.float64).reshape(shape or [-1])
    q = np.rint(np.asarray(x, np.float64) / scale) + zp
    return np.clip(q, lo, hi).astype(dtype).reshape(np.shape(x))


def dequantize_array(q: np.ndarray, params: QParams) -> np.ndarray:
    shape = [1] * np.ndim(q)
    if len(params.scales) > 1:
        shape[params.axis] = -1
    scale = np.asarray(params.scales, np.float64).reshape(shape or [-1])
    zp = np.asarray(params.zero_points, np.float64).reshape(shape or [-1])
    return ((np.asarray(q, np.float64) - zp) * scale).astype(np.float32)


def symmetric_per_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, QParams]:
    """int8 weights with one scale per slice along ``axis`` (the layout's output-channel axis).

    Scales are re-derived in the final TFLite layout (max |w| / 127 per channel) rather than
    copied from the ONNX initializer, so they are ordered like the filter by construction and
    stay right after any float-side rewrite (folded BatchNorm, input normalization). For ORT's
    symmetric weights this reproduces the ONNX int8 values exactly.
    """
    w = np.asarray(w, np.float32)
    other = tuple(i for i in range(w.ndim) if i != axis)
    absmax = np.abs(w).max(axis=other).astype(np.float64) if w.size else np.zeros(0)
    scales = np.where(absmax > 0, absmax / WEIGHT_QMAX, 1.0)  # a dead channel still needs scale > 0
    params = QParams(tuple(float(np.float32(s)) for s in scales), (0,) * len(scales), axis)
    q = quantize_array(w, params)
    return np.clip(q, -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int8), params


def bias_params(input_scale: float, weight: QParams) -> QParams:
    """int32 bias parameters: scale s_in * s_w per channel, zero point 0 (TFLite spec)."""
    scales = tuple(float(np.float32(input_scale * s)) for s in weight.scales)
    return QParams(scales, (0,) * len(scales), 0)


def quantize_bias(b: np.ndarray, params: QParams, dtype: str = "int32") -> np.ndarray:
    """int32 bias (int8 kernels) or int64 (16x8 kernels)."""
    scale = np.asarray(params.scales, np.float64)
    q = np.rint(np.asarray(b, np.float64) / scale)
    if dtype == "int64":
        return q.astype(np.int64)
    return np.clip(q, -(2**31) + 1, 2**31 - 1).astype(np.int32)


def minmax_params(x: np.ndarray, dtype: str = "int8") -> QParams:
    """Per-tensor parameters covering ``x`` and 0 (for constant operands): asymmetric int8,
    or symmetric int16 with zero point 0 as the 16x8 kernels require."""
    lo = min(float(np.min(x)), 0.0) if np.size(x) else 0.0
    hi = max(float(np.max(x)), 0.0) if np.size(x) else 0.0
    if hi == lo:
        return QParams.per_tensor(1.0, 0)
    if dtype == "int16":
        return QParams.per_tensor(max(hi, -lo) / INT16_MAX, 0)
    scale = (hi - lo) / (INT8_MAX - INT8_MIN)
    zero_point = int(np.clip(round(INT8_MIN - lo / scale), INT8_MIN, INT8_MAX))
    return QParams.per_tensor(scale, zero_point)


def normalization_affine(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) per channel such that the normalized input is ``a * p + b`` for raw pixels p in 0..255.

    From x = (p / 255 - mean) / std: a = 1 / (255 std), b = -mean / std.
    """
    mean_a = np.asarray(mean, np.float64).reshape(-1)
    std_a = np.asarray(std, np.float64).reshape(-1)
    if mean_a.shape != std_a.shape or (std_a <= 0).any():
        raise ValueError("normalization needs one mean and one positive std per channel")
    return 1.0 / (255.0 * std_a), -mean_a / std_a


def fold_input_affine(
    filter_ohwi: np.ndarray, bias: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fold x = a * p + b (per input channel) into a CONV_2D [O, kh, kw, I] filter and bias.

    w'[..., c] = w[..., c] * a[c] and b' = bias + sum w[o, :, :, c] * b[c]; exact only when the
    conv does not pad, because padding would insert p = 0 instead of x = 0.
    """
    w = np.asarray(filter_ohwi, np.float64)
    folded_w = w * a.reshape(1, 1, 1, -1)
    folded_b = np.asarray(bias, np.float64) + (w * b.reshape(1, 1, 1, -1)).sum(axis=(1, 2, 3))
    return folded_w.astype(np.float32), folded_b.astype(np.float32)
