"""Write the page template of `dvc plots show`, with Vega, Vega-Lite and Vega-Embed inlined.

DVC's own page loads the three libraries from a CDN each time it is opened: it
is blank without a network, and tells a third party when it is opened with
one. `.dvc/config` (`plots.html_template`) points DVC at this template
instead. It is committed and never edited by hand: this module writes it from
the JavaScript bundle of vl-convert-python, pinned in pyproject.toml, and
tests/test_plots_offline.py checks that the committed file is what it writes.
Run it from the repository root after changing the pin:

    python -m pipeline.report.plots_template
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import vl_convert

from pipeline.files import atomic_write_text

# .dvc/config names it relative to .dvc/: `html_template = plots_template.html`.
TEMPLATE_FILE = Path(".dvc", "plots_template.html")
# DVC's plot specs declare Vega-Lite v5 ($schema .../vega-lite/v5.json);
# vega-embed warns when the library's major version differs. The newest v5 bundled.
VEGA_LITE_VERSION = "5.21"
# What dvc-render substitutes. `{scripts}` (the CDN tags) is left out on purpose.
PLOTS_PLACEHOLDER, REFRESH_PLACEHOLDER = "{plot_divs}", "{refresh_tag}"

PAGE = """<!DOCTYPE html>
<!-- Written by `python -m pipeline.report.plots_template` from vl-convert-python {converter}
     ({libraries}); do not edit. -->
<html>
<head>
    <meta charset="utf-8">
    {refresh}
    <title>DVC Plot</title>
    <script>
{bundle}
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {plots}
</body>
</html>
"""


def library_versions() -> str:
    return (
        f"vega {vl_convert.get_vega_version()}, vega-lite {VEGA_LITE_VERSION}, "
        f"vega-embed {vl_convert.get_vega_embed_version()}"
    )


def render_template() -> str:
    """The template: DVC's default page, with the libraries in one inline script.
    The bundle defines window.vega, window.vegaLite and window.vegaEmbed."""
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE_VERSION)
    # An inline script ends at the first "</script"; dvc-render replaces its
    # placeholders anywhere in the page, the script included.
    for forbidden in ("</script", "<!--", "{scripts}", PLOTS_PLACEHOLDER, REFRESH_PLACEHOLDER):
        if forbidden in bundle.lower():
            raise ValueError(f"the JavaScript bundle contains {forbidden!r}: it cannot be inlined")
    return PAGE.format(
        converter=vl_convert.__version__,
        libraries=library_versions(),
        refresh=REFRESH_PLACEHOLDER,
        bundle=bundle,
        plots=PLOTS_PLACEHOLDER,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=TEMPLATE_FILE, help="where to write (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    atomic_write_text(args.output, render_template())  # never a half-written template


if __name__ == "__main__":
    main()
