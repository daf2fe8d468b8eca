"""Build the book and look at it in headless Chromium, as a reader would.

The build here renders the committed notebook outputs (execution off): the chapters are
executed once per test run already, by nbval, and `make book` executes them again in full.
Set SCRATCHFORMER_BOOK_HTML to an existing _build/html to check that build instead.

Without Chromium the browser tests are skipped, and the summary says why and how to install
it; with SCRATCHFORMER_REQUIRE_BROWSER=1 (set by .ci/run) a missing browser fails them instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

import nbtools

ROOT = nbtools.ROOT
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOTS = ROOT / "_build" / "screenshots"


INSTALL = "apt-get update && apt-get install -y chromium"


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def chromium() -> str:
    path = find_chromium()
    if path is None:
        message = f"Chromium is not installed, so the browser checks cannot run: `{INSTALL}`"
        if os.environ.get("SCRATCHFORMER_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " (SCRATCHFORMER_REQUIRE_BROWSER=1: CI must not skip them)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def browser() -> str:
    """The Chromium binary; skips (or fails under SCRATCHFORMER_REQUIRE_BROWSER=1) without one."""
    return chromium()


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    if given := os.environ.get("SCRATCHFORMER_BOOK_HTML"):
        return Path(given)
    out = tmp_path_factory.mktemp("book")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    config_path = out / "_config.yml"
    config_path.write_text(yaml.safe_dump(config))
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run(
        [str(jupyter_book), "build", "--all", "-W", "-n", "--keep-going", "--path-output", str(out),
         "--config", str(config_path), str(ROOT)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out / "_build" / "html"


def dump_dom(url: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
             "--window-size=1280,1400", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def screenshot(url: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
             "--hide-scrollbars", "--window-size=1280,1400", f"--screenshot={path}", url],
            capture_output=True, timeout=120, check=True,
        )


def test_book_builds_with_every_chapter_and_learner_page(html):
    """Needs no browser: the build succeeded and every page of the table of contents is there."""
    toc = (ROOT / "_toc.yml").read_text()
    for name in re.findall(r"file:\s*(notebooks/[\w/]+)", toc):
        assert (html / f"{name}.html").exists(), name


@pytest.fixture(scope="module")
def chapter_02(html, browser) -> tuple[Path, str]:
    page = html / "notebooks" / "02_self_attention.html"
    assert page.exists(), sorted(p.name for p in (html / "notebooks").iterdir())
    return page, dump_dom(page.as_uri())


def test_math_is_typeset_by_the_bundled_mathjax(chapter_02):
    page, dom = chapter_02
    assert dom.count("<mjx-container") >= 10, "MathJax did not typeset the equations"
    scripts = re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', page.read_text())
    assert scripts and all(not s.startswith("http") for s in scripts), f"MathJax not bundled: {scripts}"


def test_figures_are_there(chapter_02):
    page, dom = chapter_02
    images = re.findall(r'<img[^>]+src="([^"]+\.png)"', dom)
    assert len(images) >= 3, images
    for src in images:
        data = (page.parent / src).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, src


def test_executed_outputs_are_shown(chapter_02):
    _, dom = chapter_02
    assert "passed" in dom and "sequences 0-1 match; empty sequence: ours all 0" in dom


def test_colab_link_points_at_the_committed_notebook(chapter_02):
    _, dom = chapter_02
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    repo = url.removeprefix("https://github.com/")
    assert f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/02_self_attention.ipynb" in dom


def test_exercise_page_has_its_own_colab_link(html, browser):
    dom = dump_dom((html / "notebooks" / "exercises" / "02_self_attention.html").as_uri())
    assert "blob/main/notebooks/exercises/02_self_attention.ipynb" in dom
    assert "YOUR CODE HERE" in dom


def test_search_finds_softmax(html, browser):
    dom = dump_dom((html / "search.html").as_uri() + "?q=softmax")
    summary = re.search(r"found (\d+) page", dom)
    assert summary and int(summary.group(1)) >= 1, "search found nothing"
    results = re.search(r'<ul class="search">(.*?)</ul>', dom, re.S)
    assert results and "02_self_attention" in results.group(1)


# Reports, for the code of every cell, whether it scrolls sideways (wider than its column).
OVERFLOW_PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const pre = [...document.querySelectorAll("div.cell_input div.highlight pre")];
  const wide = pre.filter(p => p.scrollWidth > p.clientWidth + 1)
                  .map(p => p.textContent.split("\\n")[0].slice(0, 60));
  const out = document.createElement("div");
  out.id = "overflow-report";
  out.textContent = JSON.stringify({cells: pre.length, wide: wide});
  document.body.appendChild(out);
}, 500));</script>"""


@pytest.mark.parametrize("name", [p.stem for p in nbtools.chapter_paths()])
def test_no_code_cell_scrolls_sideways_at_1280_px(html, browser, name, tmp_path):
    """Every code line fits the code column at 1280 px (book/_static/code.css sets the font)."""
    import json

    page = html / "notebooks" / f"{name}.html"
    probe = page.with_name(f"_probe_{name}.html")
    probe.write_text(page.read_text().replace("</body>", OVERFLOW_PROBE + "</body>"))
    try:
        dom = dump_dom(probe.as_uri())
    finally:
        probe.unlink()
    report = re.search(r'id="overflow-report">([^<]*)<', dom)
    assert report, "the probe did not run"
    result = json.loads(report.group(1).replace("&quot;", '"').replace("&gt;", ">")
                        .replace("&lt;", "<").replace("&amp;", "&"))
    assert result["cells"] >= 5 and result["wide"] == [], result


def test_screenshot_of_chapter_02(chapter_02):
    page, _ = chapter_02
    target = SCREENSHOTS / "02_self_attention.png"
    screenshot(page.as_uri(), target)
    data = target.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20000


def test_a_missing_browser_skips_with_the_install_command_or_fails_in_ci(monkeypatch):
    """No Chromium: skipped with the reason and the install command; under
    SCRATCHFORMER_REQUIRE_BROWSER=1 (CI) a failure instead, so CI never skips silently."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("SCRATCHFORMER_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get update && apt-get install -y chromium"):
        chromium()
    monkeypatch.setenv("SCRATCHFORMER_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="CI must not skip them"):
        chromium()
