"""`dvc plots show` writes a page that draws without a network: the committed
template (.dvc/plots_template.html) inlines Vega, Vega-Lite and Vega-Embed,
where DVC's own page loads them from a CDN."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from configobj import ConfigObj
from dvc_render import VegaRenderer, render_html

from pipeline.report import plots_template

from .conftest import REPO, dvc, project_copy

TEMPLATE = REPO / plots_template.TEMPLATE_FILE
# What the bundle's own snippet defines, and DVC's plot divs call (vegaEmbed).
LIBRARIES = ("window.vega=", "window.vegaLite=", "window.vegaEmbed=")
PLOTS = ("test_accuracy", "test_loss", "train_loss")  # dvc.yaml `plots`
CSVS = ("bn.csv", "nobn.csv")


class Page(HTMLParser):
    """A page's <script> elements (src or None, text), its src and href
    attribute values, and the attributes of the line marks Vega drew."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.scripts: list[tuple[str | None, str]] = []
        self.links: list[str] = []
        self.line_marks: list[dict[str, str | None]] = []
        self._in_script = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag == "script":
            self.scripts.append((named.get("src"), ""))
            self._in_script = True
        if tag == "path" and named.get("aria-roledescription") == "line mark":
            self.line_marks.append(named)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            src, text = self.scripts[-1]
            self.scripts[-1] = (src, text + data)


def assert_offline(html: str) -> None:
    """No script, image or stylesheet from elsewhere; the libraries inline."""
    page = Page(html)
    assert not [link for link in page.links if link.startswith(("http://", "https://", "//"))]
    assert all(src is None for src, _ in page.scripts)
    libraries = [text for _, text in page.scripts if LIBRARIES[0] in text]
    assert len(libraries) == 1
    assert all(marker in libraries[0] for marker in LIBRARIES)


def test_dvc_config_points_at_the_template() -> None:
    # DVC reads plots.html_template relative to .dvc/ unless it is absolute.
    named = ConfigObj(str(REPO / ".dvc" / "config"))["plots"]["html_template"]
    assert (REPO / ".dvc" / named).resolve() == TEMPLATE.resolve()


def test_template_inlines_the_libraries_and_leaves_dvc_one_placeholder() -> None:
    template = TEMPLATE.read_text(encoding="utf-8")
    assert_offline(template)
    assert template.count("{plot_divs}") == 1
    assert "{scripts}" not in template  # where DVC would put its CDN tags
    assert plots_template.library_versions() in template


def test_dvc_render_fills_the_template_without_a_cdn(tmp_path: Path) -> None:
    points = [{"epoch": 1, "test_loss": 0.5}, {"epoch": 2, "test_loss": 0.25}]
    renderer = VegaRenderer(points, "test_loss", x="epoch", y="test_loss")
    render_html([renderer], tmp_path / "index.html", html_template=str(TEMPLATE))
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert_offline(html)
    assert "{plot_divs}" not in html
    assert "vegaEmbed('#test_loss', spec)" in html


def test_committed_template_is_what_the_generator_writes() -> None:
    assert plots_template.render_template().encode("utf-8") == TEMPLATE.read_bytes(), (
        "run `python -m pipeline.report.plots_template` and commit .dvc/plots_template.html"
    )


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """index.html of `dvc plots show` in a fresh copy of the project."""
    root = tmp_path_factory.mktemp("plots")
    repo = project_copy(root)
    done = dvc(repo, "plots", "show", "-o", str(root / "plots"))
    assert done.returncode == 0, done.stdout + done.stderr
    return root / "plots" / "index.html"


@pytest.mark.slow
def test_dvc_plots_show_on_a_fresh_clone_writes_an_offline_page(shown: Path) -> None:
    html = shown.read_text(encoding="utf-8")
    assert_offline(html)
    assert all(f"vegaEmbed('#{plot}', spec)" in html for plot in PLOTS)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_the_page_draws_every_curve_in_chromium_without_a_network(shown: Path) -> None:
    # Every request goes to a proxy on a closed port: only the page itself loads.
    command = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={shown.parent / 'profile'}",
        "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
        "--virtual-time-budget=5000", "--dump-dom", shown.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    # Vega's SVG labels each line with its points: "epoch: 1; test_loss: 0.16; ...; filename: bn.csv".
    drawn = Page(done.stdout).line_marks
    for plot, csv in itertools.product(PLOTS, CSVS):
        lines = [
            mark["d"] or ""
            for mark in drawn
            if f"{plot}: " in (mark["aria-label"] or "")
            and f"filename: {csv}" in (mark["aria-label"] or "")
        ]
        assert any(d.startswith("M") and "L" in d for d in lines), (plot, csv)
