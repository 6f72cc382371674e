"""Dynamic-range int8 ONNX through onnxruntime's ``quantize_dynamic``: int8 weights, float
activations quantized per batch at run time. Needs no calibration data.

Per-channel symmetric int8 weights, as the TFLite hybrid kernels use; ORT turns Conv into
ConvInteger and Gemm/MatMul into MatMulInteger (or DynamicQuantizeLinear + MatMulInteger),
with the input quantized to uint8 at run time (ORT's dynamic kernels take uint8 activations).
"""

from __future__ import annotations

from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic

from exporter.common.atomic import atomic_path
from exporter.quantize.onnx_int8 import _quiet

__all__ = ["dynamic_onnx"]


def dynamic_onnx(fp32_path: Path, out_path: Path) -> Path:
    """Write the dynamic-range int8 copy of ``fp32_path`` to ``out_path`` atomically."""
    with atomic_path(out_path) as tmp, _quiet():
        quantize_dynamic(
            str(fp32_path),
            str(tmp),
            per_channel=True,
            weight_type=QuantType.QInt8,
            extra_options={"WeightSymmetric": True},
        )
    return out_path
