"""What the exporter knows about each artifact it wrote (runtime_check measures the rest).

The list is saved as ``artifacts.json`` beside the artifacts so that `edgepack check` can
validate an output directory again, on another target, without the torch model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from exporter.errors import InputFileError

MANIFEST = "artifacts.json"


@dataclass
class Artifact:
    path: str  # file name inside the output directory
    format: str  # onnx | tflite
    precision: str  # fp32 | int8 | ...
    storage: str = "dense"  # dense | sparse | ...
    extra: dict = field(default_factory=dict)  # format-specific: op counts, transposes, layout


# Wall-clock figures of this run: they stay in report.json but not in the manifest, which
# describes only the files, so that the same inputs write a byte-identical artifacts.json.
_VOLATILE = frozenset({"conversion_s"})


def save_manifest(artifacts: list[Artifact], out_dir: Path) -> None:
    rows = [dataclasses.asdict(a) for a in artifacts]
    for row in rows:
        row["extra"] = {k: v for k, v in row["extra"].items() if k not in _VOLATILE}
    (out_dir / MANIFEST).write_text(json.dumps(rows, indent=2) + "\n")


def load_manifest(out_dir: Path) -> list[Artifact]:
    path = out_dir / MANIFEST
    if not path.is_file():
        raise InputFileError(f"{out_dir} is not an edgepack output directory (no {MANIFEST})")
    try:
        return [Artifact(**row) for row in json.loads(path.read_text())]
    except (ValueError, TypeError) as exc:
        raise InputFileError(f"{path}: unreadable ({exc})") from None
