"""A reader of TFLite Model Metadata for tests, independent of exporter.package.metadata.

It walks the flatbuffer with flatbuffers' generic ``Table`` accessors, following the field order
of tflite-support's metadata_schema.fbs (slot = 4 + 2 * field index; a union takes two fields,
its type byte first). It shares no code with the writer, so a slot the writer gets wrong shows
up here as a wrong or missing value.
"""

from __future__ import annotations

from flatbuffers import encode
from flatbuffers import number_types as N
from flatbuffers.table import Table


class Tab:
    def __init__(self, buf: bytes, pos: int):
        self.tab = Table(bytearray(buf) if isinstance(buf, bytes) else buf, pos)

    def _at(self, field: int) -> int:
        return self.tab.Offset(4 + 2 * field)

    def string(self, field: int) -> str | None:
        o = self._at(field)
        return self.tab.String(o + self.tab.Pos).decode() if o else None

    def int8(self, field: int) -> int:
        o = self._at(field)
        return self.tab.Get(N.Int8Flags, o + self.tab.Pos) if o else 0

    def uint8(self, field: int) -> int:
        o = self._at(field)
        return self.tab.Get(N.Uint8Flags, o + self.tab.Pos) if o else 0

    def uint32(self, field: int) -> int:
        o = self._at(field)
        return self.tab.Get(N.Uint32Flags, o + self.tab.Pos) if o else 0

    def table(self, field: int) -> Tab | None:
        o = self._at(field)
        return Tab(self.tab.Bytes, self.tab.Indirect(o + self.tab.Pos)) if o else None

    def union(self, field: int) -> Tab | None:
        o = self._at(field)
        if not o:
            return None
        t = Table(self.tab.Bytes, 0)
        self.tab.Union(t, o)
        return Tab(self.tab.Bytes, t.Pos)

    def tables(self, field: int) -> list[Tab]:
        o = self._at(field)
        if not o:
            return []
        start, n = self.tab.Vector(o), self.tab.VectorLen(o)
        return [Tab(self.tab.Bytes, self.tab.Indirect(start + 4 * i)) for i in range(n)]

    def floats(self, field: int) -> list[float]:
        o = self._at(field)
        if not o:
            return []
        start, n = self.tab.Vector(o), self.tab.VectorLen(o)
        return [self.tab.Get(N.Float32Flags, start + 4 * i) for i in range(n)]


def _file(t: Tab) -> dict:
    return {"name": t.string(0), "description": t.string(1), "type": t.int8(2)}


def read_model_metadata(buf: bytes) -> dict:
    """The ModelMetadata fields edgepack writes, as plain Python values."""
    assert buf[4:8] == b"M001", buf[4:8]
    root = Tab(buf, encode.Get(N.UOffsetTFlags.packer_type, bytearray(buf), 0))
    out = {
        "name": root.string(0),
        "description": root.string(1),
        "version": root.string(2),
        "author": root.string(4),
        "license": root.string(5),
        "min_parser_version": root.string(7),
        "subgraphs": [],
    }
    for sg in root.tables(3):
        (inp,) = sg.tables(2)
        (outp,) = sg.tables(3)
        content = inp.table(3)
        image = content.union(1)
        size = image.table(1)
        (unit,) = inp.tables(4)
        norm = unit.union(1)
        stats = inp.table(5)
        o_content = outp.table(3)
        out["subgraphs"].append(
            {
                "input": {
                    "name": inp.string(0),
                    "description": inp.string(1),
                    "content_type": content.uint8(0),
                    "color_space": image.int8(0),
                    "width": size.uint32(0),
                    "height": size.uint32(1),
                    "unit_type": unit.uint8(0),
                    "mean": norm.floats(0),
                    "std": norm.floats(1),
                    "stats_max": stats.floats(0),
                    "stats_min": stats.floats(1),
                },
                "output": {
                    "name": outp.string(0),
                    "description": outp.string(1),
                    "content_type": o_content.uint8(0),
                    "files": [_file(f) for f in outp.tables(6)],
                },
            }
        )
    return out
