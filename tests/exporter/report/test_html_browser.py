"""report.html of a real run, opened in headless Chromium: the figures are drawn, nothing fetched.

The run goes through the CLI, as a user's would, and must leave report.html (and check,
checks/<target>.html) beside the JSON. The browser half needs Debian's ``chromium`` (.ci/run
installs it) and is skipped without it. To tell "plots drawn" from "plots failed to load" the
page is shot twice: as written, and with every figure emptied (same boxes, no content). The
difference between the two is exactly what the figures draw; it must be large and coloured.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporter.report.html import render_html
from tests.exporter.report.samples import assert_self_contained
from tests.helpers import invoke

pytestmark = pytest.mark.slow

FAST = [
    "--set",
    "runtime.runs=10",
    "--set",
    "runtime.warmup=1",
    "--set",
    "compress.finetune.epochs=1",
]
WINDOW = (1280, 2400)


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits_seed) -> dict:
    """A trained seed CNN on digits, run and then checked through the CLI."""
    tmp = tmp_path_factory.mktemp("browser")
    out = tmp / "out"
    res = invoke("run", "--model", "seed-cnn", "--weights", digits_seed, "--out", out, *FAST)
    assert res.exit_code in (0, 1), res.output  # a budget may fail; the report is written
    check = invoke(
        "check",
        out,
        "--target",
        "x86_64",
        "--set",
        "runtime.runs=10",
        "--set",
        "runtime.warmup=1",
        "-q",
    )
    assert check.exit_code in (0, 1), check.output
    return {
        "out": out,
        "output": res.output,
        "report": json.loads((out / "report.json").read_text()),
    }


def test_run_and_check_write_the_html(run):
    out = run["out"]
    lines = run["output"].splitlines()
    assert f"report: {out / 'report.json'}" in lines and f"report: {out / 'report.html'}" in lines
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page == render_html(run["report"]), "report.html is not the rendering of report.json"
    assert_self_contained(page)
    assert ("PASSED" if run["report"]["passed"] else "FAILED") in page
    check = json.loads((out / "checks" / "x86_64.json").read_text())
    check_page = (out / "checks" / "x86_64.html").read_text(encoding="utf-8")
    assert check_page == render_html(check)
    assert_self_contained(check_page)


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None
    )
    if binary is None:
        pytest.skip(
            "chromium is not installed (apt-get install --no-install-recommends "
            "chromium; .ci/run does)"
        )
    return binary


def _chromium(binary: str, tmp: Path, page: Path, *mode: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"  # fresh for every run
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        *mode,
        page.as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def _shot(binary: str, tmp: Path, page: Path) -> np.ndarray:
    png = tmp / f"{page.stem}.png"
    _chromium(binary, tmp, page, f"--screenshot={png}")
    img = Image.open(png).convert("RGB")
    assert img.size == WINDOW
    return np.asarray(img).astype(np.int16)


def _emptied(page: str) -> str:
    """The same page with every figure's drawing removed; its <svg> box (viewBox) stays."""
    return re.sub(r"(<svg\b[^>]*>).*?</svg>", r"\1</svg>", page, flags=re.S)


def test_screenshot_is_readable_and_plots_are_drawn(run, chromium, tmp_path):
    page = run["out"] / "report.html"
    real = _shot(chromium, tmp_path, page)
    bare_page = tmp_path / "bare.html"
    bare_page.write_text(_emptied(page.read_text(encoding="utf-8")), encoding="utf-8")
    bare = _shot(chromium, tmp_path, bare_page)

    # Not blank: text, tables and the verdict banner put plenty of ink on the page.
    ink = (real < 235).any(axis=2)
    assert ink.mean() > 0.03, f"only {ink.mean():.1%} of the page is not white"
    colours = np.unique(real.reshape(-1, 3), axis=0)
    assert len(colours) > 300, f"{len(colours)} distinct colours: a blank or text-only page"
    banner = np.array([0xE6, 0xF4, 0xEA] if run["report"]["passed"] else [0xFC, 0xE8, 0xE6])
    assert (np.abs(real - banner).max(axis=2) <= 2).sum() > 20_000, "no verdict banner"

    # What the figures draw: the pixels that differ from the page with emptied figures.
    drawn = np.abs(real - bare).max(axis=2) > 24
    assert drawn.sum() > 30_000, f"the figures drew only {drawn.sum()} pixels"
    ys, xs = np.nonzero(drawn)
    # Both scatter plots sit side by side: the drawing spans most of the page width.
    assert xs.max() - xs.min() > WINDOW[0] * 0.6
    # And it is in colour: markers, budget lines and sparsity bars, not only black axes.
    chroma = real.max(axis=2) - real.min(axis=2)
    assert ((chroma > 60) & drawn).sum() > 2_000, "the plots show no coloured marks"
    budget_red = np.array([0xC0, 0x39, 0x2B])
    assert ((np.abs(real - budget_red).max(axis=2) < 40) & drawn).sum() > 100, (
        "no budget line drawn"
    )
    # The figures come after the verdict and the artifacts table, not over them.
    assert ys.min() > 300


def test_dom_has_the_figures_and_fetches_nothing(run, chromium, tmp_path):
    res = _chromium(chromium, tmp_path, run["out"] / "report.html", "--dump-dom")
    dom = res.stdout
    parsed = assert_self_contained(dom)
    # Two scatters and the sparsity bars, parsed by the browser as SVG with drawn paths.
    assert parsed.tags.count("svg") == 3 and parsed.tags.count("path") > 100
    assert 'id="verdict"' in dom
    for art in run["report"]["artifacts"]:
        assert f">{art['path']}<" in dom
