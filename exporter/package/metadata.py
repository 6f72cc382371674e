"""TFLite Model Metadata (``metadata_schema.fbs``, identifier ``M001``) and how it rides in a model.

The Task Library and Android Studio's model binding read a model's labels, normalization and
image format from this flatbuffer, stored as a model buffer that the model's ``metadata`` vector
names ``TFLITE_METADATA``; the files it refers to (labels.txt) are appended to the .tflite as an
uncompressed zip. We fill only the tables an image classifier needs, through the object API
generated from tflite-support's schema (``metadata_schema_py_generated``, made by
``scripts/gen_metadata_schema.py``); the model itself is extended by the TFLite writer.
"""

from __future__ import annotations

from dataclasses import dataclass

import flatbuffers
from ai_edge_litert import schema_py_generated as schema

from exporter.errors import PackageError
from exporter.package import metadata_schema_py_generated as mfb
from exporter.package.zipfile_det import append_zip
from exporter.tflite.writer import append_metadata

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
TFLITE_IDENTIFIER = b"TFL3"
# Everything written here exists since metadata schema 1.0.0 (ImageProperties,
# NormalizationOptions, TENSOR_AXIS_LABELS), so older parsers read it fully.
MIN_PARSER_VERSION = "1.0.0"


@dataclass(frozen=True)
class ImageInputMeta:
    name: str
    description: str
    color_space: str  # RGB | GRAYSCALE | UNKNOWN (e.g. 4 channels)
    width: int
    height: int
    mean: tuple[float, ...]  # in the 0-255 pixel domain, as the Task Library applies them
    std: tuple[float, ...]
    stats_min: tuple[float, ...]  # range of the tensor's values after normalization
    stats_max: tuple[float, ...]


@dataclass(frozen=True)
class ClassifierOutputMeta:
    name: str
    description: str
    labels_file: str  # an associated file of type TENSOR_AXIS_LABELS
    labels_description: str


@dataclass(frozen=True)
class ModelMeta:
    name: str
    description: str
    version: str
    author: str
    license: str
    input: ImageInputMeta
    output: ClassifierOutputMeta


def _input_tensor(m: ImageInputMeta) -> mfb.TensorMetadataT:
    size = mfb.ImageSizeT()
    size.width, size.height = m.width, m.height
    image = mfb.ImagePropertiesT()
    image.colorSpace = getattr(mfb.ColorSpaceType, m.color_space)
    image.defaultSize = size
    content = mfb.ContentT()
    content.contentPropertiesType = mfb.ContentProperties.ImageProperties
    content.contentProperties = image
    norm = mfb.NormalizationOptionsT()
    norm.mean, norm.std = list(m.mean), list(m.std)
    unit = mfb.ProcessUnitT()
    unit.optionsType = mfb.ProcessUnitOptions.NormalizationOptions
    unit.options = norm
    stats = mfb.StatsT()
    stats.min, stats.max = list(m.stats_min), list(m.stats_max)
    t = mfb.TensorMetadataT()
    t.name, t.description = m.name, m.description
    t.content, t.processUnits, t.stats = content, [unit], stats
    return t


def _output_tensor(m: ClassifierOutputMeta) -> mfb.TensorMetadataT:
    content = mfb.ContentT()
    content.contentPropertiesType = mfb.ContentProperties.FeatureProperties
    content.contentProperties = mfb.FeaturePropertiesT()
    labels = mfb.AssociatedFileT()
    labels.name, labels.description = m.labels_file, m.labels_description
    labels.type = mfb.AssociatedFileType.TENSOR_AXIS_LABELS
    t = mfb.TensorMetadataT()
    t.name, t.description = m.name, m.description
    t.content, t.associatedFiles = content, [labels]
    return t


def build_metadata(meta: ModelMeta) -> bytes:
    """The ModelMetadata flatbuffer (one subgraph, one image input, one classifier output)."""
    sub = mfb.SubGraphMetadataT()
    sub.name = "image_classifier"
    sub.inputTensorMetadata = [_input_tensor(meta.input)]
    sub.outputTensorMetadata = [_output_tensor(meta.output)]
    m = mfb.ModelMetadataT()
    m.name, m.description, m.version = meta.name, meta.description, meta.version
    m.author, m.license = meta.author, meta.license
    m.minParserVersion = MIN_PARSER_VERSION
    m.subgraphMetadata = [sub]
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


def embed_metadata(model: bytes, metadata: bytes, associated: dict[str, bytes]) -> bytes:
    """``model`` with ``metadata`` as its TFLITE_METADATA buffer and ``associated`` appended.

    The TFLite writer adds the buffer without re-packing the model, so the packaged model
    is the artifact plus the metadata and a few hundred bytes of flatbuffer bookkeeping.
    """
    if model[4:8] != TFLITE_IDENTIFIER:
        raise PackageError("not a TFLite flatbuffer (missing TFL3 identifier)")
    if metadata[4:8] != METADATA_IDENTIFIER:
        raise PackageError("metadata buffer lacks the M001 identifier")
    try:
        packed = append_metadata(model, {METADATA_NAME: metadata})
    except ValueError as exc:
        raise PackageError(f"cannot add metadata to the TFLite model: {exc}") from None
    return append_zip(packed, associated)


def _name(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def read_metadata_buffer(model: bytes) -> bytes | None:
    """The raw TFLITE_METADATA buffer of a model, or None (used by ``--verify``)."""
    root = schema.Model.GetRootAs(model, 0)
    for i in range(root.MetadataLength()):
        md = root.Metadata(i)
        if _name(md.Name()) == METADATA_NAME:
            return root.Buffers(md.Buffer()).DataAsNumpy().tobytes()
    return None
