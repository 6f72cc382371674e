"""Op-family converter modules; importing this package fills ``registry.REGISTRY``."""

from exporter.tflite.ops import (  # noqa: F401
    activation,
    conv,
    elementwise,
    linear,
    normalization,
    pool,
    qdq,
    reduce,
    resize,
    shape,
    slicing,
)
