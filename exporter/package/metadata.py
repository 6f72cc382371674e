"""TFLite Model Metadata (``metadata_schema.fbs``, identifier ``M001``) and how it rides in a model.

The Task Library and Android Studio's model binding read a model's labels, normalization and
image format from this flatbuffer, stored as a model buffer that the model's ``metadata`` vector
names ``TFLITE_METADATA``; the files it refers to (labels.txt) are appended to the .tflite as an
uncompressed zip. We write only the tables an image classifier needs, with the plain
``flatbuffers`` builder and the slot numbers of the schema (a field's slot is its position in
the table; a union field takes two slots, its type byte first).
"""

from __future__ import annotations

from dataclasses import dataclass

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from exporter.errors import PackageError
from exporter.package.zipfile_det import append_zip

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
TFLITE_IDENTIFIER = b"TFL3"
# Everything written here exists since metadata schema 1.0.0 (ImageProperties,
# NormalizationOptions, TENSOR_AXIS_LABELS), so older parsers read it fully.
MIN_PARSER_VERSION = "1.0.0"
_BUFFER_ALIGNMENT = 16  # keep weights 16-byte aligned, as the model's writer did

# Enum and union values of metadata_schema.fbs.
COLOR_SPACE = {"UNKNOWN": 0, "RGB": 1, "GRAYSCALE": 2}
TENSOR_AXIS_LABELS = 2
_CONTENT_FEATURE = 1  # ContentProperties.FeatureProperties
_CONTENT_IMAGE = 2  # ContentProperties.ImageProperties
_UNIT_NORMALIZATION = 1  # ProcessUnitOptions.NormalizationOptions


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


def _offset_vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _floats(b: flatbuffers.Builder, values: tuple[float, ...]) -> int:
    return b.CreateNumpyVector(np.asarray(values, dtype="<f4"))


def _associated_file(b: flatbuffers.Builder, name: str, description: str, kind: int) -> int:
    name_off, desc_off = b.CreateString(name), b.CreateString(description)
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, name_off, 0)
    b.PrependUOffsetTRelativeSlot(1, desc_off, 0)
    b.PrependInt8Slot(2, kind, 0)
    return b.EndObject()


def _stats(b: flatbuffers.Builder, lo: tuple[float, ...], hi: tuple[float, ...]) -> int:
    hi_off, lo_off = _floats(b, hi), _floats(b, lo)
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(0, hi_off, 0)  # max
    b.PrependUOffsetTRelativeSlot(1, lo_off, 0)  # min
    return b.EndObject()


def _input_tensor(b: flatbuffers.Builder, m: ImageInputMeta) -> int:
    b.StartObject(2)  # ImageSize
    b.PrependUint32Slot(0, m.width, 0)
    b.PrependUint32Slot(1, m.height, 0)
    size = b.EndObject()
    b.StartObject(2)  # ImageProperties
    b.PrependInt8Slot(0, COLOR_SPACE[m.color_space], 0)
    b.PrependUOffsetTRelativeSlot(1, size, 0)
    image = b.EndObject()
    b.StartObject(3)  # Content
    b.PrependUint8Slot(0, _CONTENT_IMAGE, 0)
    b.PrependUOffsetTRelativeSlot(1, image, 0)
    content = b.EndObject()

    mean, std = _floats(b, m.mean), _floats(b, m.std)
    b.StartObject(2)  # NormalizationOptions
    b.PrependUOffsetTRelativeSlot(0, mean, 0)
    b.PrependUOffsetTRelativeSlot(1, std, 0)
    norm = b.EndObject()
    b.StartObject(2)  # ProcessUnit
    b.PrependUint8Slot(0, _UNIT_NORMALIZATION, 0)
    b.PrependUOffsetTRelativeSlot(1, norm, 0)
    unit = b.EndObject()
    units = _offset_vector(b, [unit])

    stats = _stats(b, m.stats_min, m.stats_max)
    name, desc = b.CreateString(m.name), b.CreateString(m.description)
    b.StartObject(7)  # TensorMetadata
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(1, desc, 0)
    b.PrependUOffsetTRelativeSlot(3, content, 0)
    b.PrependUOffsetTRelativeSlot(4, units, 0)
    b.PrependUOffsetTRelativeSlot(5, stats, 0)
    return b.EndObject()


def _output_tensor(b: flatbuffers.Builder, m: ClassifierOutputMeta) -> int:
    b.StartObject(0)  # FeatureProperties: no fields
    feature = b.EndObject()
    b.StartObject(3)  # Content
    b.PrependUint8Slot(0, _CONTENT_FEATURE, 0)
    b.PrependUOffsetTRelativeSlot(1, feature, 0)
    content = b.EndObject()
    files = _offset_vector(
        b, [_associated_file(b, m.labels_file, m.labels_description, TENSOR_AXIS_LABELS)]
    )
    name, desc = b.CreateString(m.name), b.CreateString(m.description)
    b.StartObject(7)  # TensorMetadata
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(1, desc, 0)
    b.PrependUOffsetTRelativeSlot(3, content, 0)
    b.PrependUOffsetTRelativeSlot(6, files, 0)
    return b.EndObject()


def build_metadata(meta: ModelMeta) -> bytes:
    """The ModelMetadata flatbuffer (one subgraph, one image input, one classifier output)."""
    b = flatbuffers.Builder(1024)
    inputs = _offset_vector(b, [_input_tensor(b, meta.input)])
    outputs = _offset_vector(b, [_output_tensor(b, meta.output)])
    sub_name = b.CreateString("image_classifier")
    b.StartObject(10)  # SubGraphMetadata
    b.PrependUOffsetTRelativeSlot(0, sub_name, 0)
    b.PrependUOffsetTRelativeSlot(2, inputs, 0)
    b.PrependUOffsetTRelativeSlot(3, outputs, 0)
    subgraph = b.EndObject()
    subgraphs = _offset_vector(b, [subgraph])
    strings = [
        b.CreateString(s)
        for s in (
            meta.name,
            meta.description,
            meta.version,
            meta.author,
            meta.license,
            MIN_PARSER_VERSION,
        )
    ]
    name, desc, version, author, lic, parser = strings
    b.StartObject(8)  # ModelMetadata
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(1, desc, 0)
    b.PrependUOffsetTRelativeSlot(2, version, 0)
    b.PrependUOffsetTRelativeSlot(3, subgraphs, 0)
    b.PrependUOffsetTRelativeSlot(4, author, 0)
    b.PrependUOffsetTRelativeSlot(5, lic, 0)
    b.PrependUOffsetTRelativeSlot(7, parser, 0)
    b.Finish(b.EndObject(), file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


class _AlignedBuffer(schema.BufferT):
    """A BufferT that starts its data on a 16-byte boundary when packed.

    Re-packing through the object API would otherwise drop the weights' alignment, and XNNPACK
    then copies every weight tensor at load time instead of reading it in place.
    """

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 - schema API name
        if self.data is not None:
            builder.Prep(_BUFFER_ALIGNMENT, len(self.data))
        return super().Pack(builder)


def embed_metadata(model: bytes, metadata: bytes, associated: dict[str, bytes]) -> bytes:
    """``model`` with ``metadata`` as its TFLITE_METADATA buffer and ``associated`` appended.

    An existing TFLITE_METADATA entry (and any zip already appended) is replaced, so packaging
    a packaged model again gives the same bytes.
    """
    if model[4:8] != TFLITE_IDENTIFIER:
        raise PackageError("not a TFLite flatbuffer (missing TFL3 identifier)")
    if metadata[4:8] != METADATA_IDENTIFIER:
        raise PackageError("metadata buffer lacks the M001 identifier")
    m = schema.ModelT.InitFromPackedBuf(model, 0)
    buffers = []
    for buf in m.buffers or []:
        if buf.offset:  # data stored after the flatbuffer (models > 2 GB): re-packing loses it
            raise PackageError("TFLite models with external buffers cannot be packaged")
        aligned = _AlignedBuffer()
        aligned.data = buf.data
        buffers.append(aligned)
    entry = _AlignedBuffer()
    entry.data = np.frombuffer(metadata, dtype=np.uint8)
    kept = [md for md in (m.metadata or []) if _name(md.name) != METADATA_NAME]
    # The old metadata buffer stays (it may be shared by index); an empty one is harmless.
    for md in m.metadata or []:
        if _name(md.name) == METADATA_NAME:
            buffers[md.buffer].data = None
    buffers.append(entry)
    record = schema.MetadataT()
    record.name = METADATA_NAME
    record.buffer = len(buffers) - 1
    m.buffers = buffers
    m.metadata = [*kept, record]
    size = sum(len(x.data) + _BUFFER_ALIGNMENT for x in buffers if x.data is not None)
    builder = flatbuffers.Builder(1024 + size)
    builder.Finish(m.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return append_zip(bytes(builder.Output()), associated)


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
