"""The scatter plots' layout: overlapping markers labelled apart, far budgets off the axis,
accuracy ticks rounded like the tables."""

from __future__ import annotations

import re

from exporter.report.page import fmt_acc
from exporter.report.plots import Line, Point, label_offsets, place_lines, scatter_svg


def _points() -> list[Point]:
    # Two artifacts with the same accuracy and nearly the same size: the markers coincide.
    return [
        Point("model.fp32.onnx", "a", "onnx", 105_196, 0.008, 97.49),
        Point("model.fp32.sparse.onnx", "b", "onnx", 104_000, 0.008, 97.49),
        Point("model.int8.tflite", "c", "tflite", 32_592, 0.002, 96.1),
    ]


def test_overlapping_markers_get_labels_at_distinct_places():
    offsets = label_offsets([(100.0, 50.0), (101.0, 50.0), (300.0, 10.0)])
    assert offsets[0] != offsets[1]
    assert offsets[2] == offsets[0]  # a lone point keeps the usual place
    svg = scatter_svg(_points(), x="size", accuracy_lines=[], x_lines=[], name="t")
    for i in (1, 2, 3):
        assert f'id="t-point-{i}"' in svg and f'id="t-label-{i}"' in svg


def test_a_far_budget_is_left_off_the_axis_and_named_at_its_edge():
    far, near = Line(50_000_000, "budget ≤ 50,000,000 B"), Line(200_000, "budget ≤ 200,000 B")
    (lo, hi), shown, off = place_lines([32_592, 105_196], [far, near])
    assert shown == [near] and off == [far]
    assert hi < 50_000_000 and hi >= 200_000
    svg = scatter_svg(_points(), x="size", accuracy_lines=[], x_lines=[far], name="t")
    assert 'id="t-offscale-0"' in svg
    (lo, hi), shown, off = place_lines([32_592, 105_196], [far])
    assert hi < 1_000_000  # the data fills the axis


def test_accuracy_ticks_use_the_tables_rounding():
    assert fmt_acc(97.494) == "97.49" and fmt_acc(97.5) == "97.50"
    svg = scatter_svg(_points(), x="latency", accuracy_lines=[], x_lines=[], name="t")
    # Tick labels are glyph paths; matplotlib keeps each label's text in a comment.
    ticks = [t for t in re.findall(r"<!-- (\d+\.\d+) -->", svg) if float(t) > 90]
    assert ticks and all(len(t.split(".")[1]) == 2 for t in ticks), ticks
