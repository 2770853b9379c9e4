"""dinolab.book: the course website is complete and loads nothing from the network.

The site is built once (``browser.lesson_site``: lesson 0 executed, the others as committed);
``tests/course/test_browser.py`` opens the same site in Chromium.
"""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser import REPO, lesson_site

from dinolab.book import (
    GLOSSARY,
    MATHJAX_CONFIG,
    REFERENCES,
    copy_mathjax,
    localize_mathjax,
    mathjax_head,
    read_syllabus,
)
from dinolab.course_runner import discover_lessons

LESSONS = discover_lessons(REPO / "course")
REMOTE = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
# Attributes that make a browser fetch something when the page opens (links do not).
FETCHING = {
    "script": ("src",), "img": ("src", "srcset"), "iframe": ("src",), "source": ("src", "srcset"),
    "video": ("src", "poster"), "audio": ("src",), "embed": ("src",), "object": ("data",),
    "input": ("src",),
}


class _Resources(HTMLParser):
    """Every URL a page would load: tag attributes, <link> stylesheets/icons, CSS url()."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for name in FETCHING.get(tag, ()):
            if a.get(name):
                self.urls.append(a[name])
        if tag == "link" and a.get("rel", "") != "":
            self.urls.append(a.get("href", ""))
        if "style" in a:
            self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", a["style"])
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            css = re.sub(r"/\*.*?\*/", "", data, flags=re.S)  # comments cite web pages
            self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", css)
            self.urls += re.findall(r"@import\s+(?:url\()?\s*['\"]?([^'\");]+)", css)


def _resources(page: Path) -> list[str]:
    parser = _Resources()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.urls


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lesson_site(tmp_path_factory.mktemp("site"))


def test_every_lesson_has_a_page_linked_from_the_contents(site: Path) -> None:
    index = (site / "index.html").read_text(encoding="utf-8")
    for lesson in LESSONS:
        page = site / f"{lesson.stem}.html"
        assert page.is_file(), f"no page for {lesson.name}"
        assert f'href="{page.name}"' in index, f"the contents page does not link {page.name}"
        text = page.read_text(encoding="utf-8")
        assert 'href="index.html"' in text, f"{page.name} has no link back to the contents"


def test_no_page_loads_anything_from_the_network(site: Path) -> None:
    pages = sorted(site.glob("*.html"))
    assert len(pages) == len(LESSONS) + 1
    for page in pages:
        urls = _resources(page)
        remote = [u for u in urls if REMOTE.match(u)]
        assert not remote, f"{page.name} loads from the network: {remote}"
        text = page.read_text(encoding="utf-8")
        # The script nbconvert would have added from a CDN is not there, MathJax's local one is.
        for cdn in ("require.js", "cdnjs", "unpkg", "jsdelivr", "mermaid.esm"):
            assert cdn not in text, f"{page.name} still mentions {cdn}"
        assert f'src="mathjax/MathJax.js?config={MATHJAX_CONFIG}"' in text, page.name
    assert (site / "mathjax" / "MathJax.js").is_file()
    assert (site / "mathjax" / "config" / "TeX-AMS-MML_HTMLorMML-full.js").is_file()
    assert list((site / "mathjax" / "fonts" / "HTML-CSS" / "STIX-Web" / "woff").glob("*.woff"))


def test_executed_lesson_page_embeds_its_figures(site: Path) -> None:
    page = (site / "00_welcome.html").read_text(encoding="utf-8")
    figures = page.count('src="data:image/png;base64,')
    assert figures >= 2, f"00_welcome.html embeds {figures} PNG figures"
    assert "without its outputs" not in page
    if not os.environ.get("DINOLAB_BOOK"):
        # The test site renders lesson 1 as committed: its page says that outputs are missing.
        other = (site / "01_contrastive_vs_distillation.html").read_text(encoding="utf-8")
        assert "without its outputs" in other


def test_contents_page_has_syllabus_times_glossary_and_references(site: Path) -> None:
    index = (site / "index.html").read_text(encoding="utf-8")
    for heading in ("Prerequisites", "Syllabus", "Glossary", "References"):
        assert f">{heading}</h2>" in index
    syllabus = read_syllabus(REPO / "course" / "README.md")
    for lesson in LESSONS:
        assert lesson.name in syllabus, f"course/README.md's syllabus has no row for {lesson.name}"
        assert syllabus[lesson.name].run_time.split()[0] in index  # its measured time
    assert index.count("min (") == len(LESSONS)  # a reading estimate per lesson
    for term, _ in GLOSSARY:
        assert term.split()[0] in index
    ids = [ref[3] for ref in REFERENCES]
    for arxiv in ("2104.14294", "2304.07193", "2508.10104", "2111.07832", "1806.03198",
                  "1503.02531", "2002.05709", "1911.05722", "2006.07733", "2010.11929",
                  "2309.16588", "2006.09882"):
        assert arxiv in ids and f'href="https://arxiv.org/abs/{arxiv}"' in index


def test_localize_mathjax_rewrites_nbconverts_cdn_script(tmp_path: Path) -> None:
    """nbgrader's feedback template calls nbconvert's mathjax() macro with its CDN default."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="classic", extra_loaders=[DictLoader(
        {"only_mathjax.j2": "{% from 'mathjax.html.j2' import mathjax %}<html><head>"
                            "{{ mathjax() }}</head><body>$x^2$</body></html>"})],
        template_file="only_mathjax.j2")
    import nbformat

    html, _ = exporter.from_notebook_node(nbformat.v4.new_notebook())
    assert "cdnjs.cloudflare.com/ajax/libs/mathjax" in html
    page = tmp_path / "student" / "a1" / "a1.html"
    page.parent.mkdir(parents=True)
    page.write_text(html)
    assert localize_mathjax(page)
    text = page.read_text()
    assert "cdnjs" not in text and mathjax_head("mathjax/MathJax.js") in text
    assert (page.parent / "mathjax" / "MathJax.js").is_file()
    assert not localize_mathjax(page)  # already local: nothing to do


def test_copy_mathjax_is_idempotent(tmp_path: Path) -> None:
    first = copy_mathjax(tmp_path / "mj")
    stamp = (first / "MathJax.js").stat().st_mtime_ns
    assert copy_mathjax(tmp_path / "mj") == first
    assert (first / "MathJax.js").stat().st_mtime_ns == stamp


def test_widget_outputs_become_a_note_and_their_state_is_dropped(tmp_path: Path) -> None:
    """An executed explorer cell: its widgets (which need a CDN loader) give way to their text
    or a note, progress bars go; the static figure drawn beside them stays."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    from dinolab.book import WIDGET_VIEW, build_book

    nb = new_notebook(cells=[
        new_markdown_cell("# Lesson 9 — Explorer\n\nThe entropy $H(p)$ of a softmax."),
        new_code_cell("explorer()", outputs=[
            new_output("display_data", data={
                WIDGET_VIEW: {"model_id": "abc", "version_major": 2, "version_minor": 0},
                "text/plain": "interactive(children=(FloatSlider(value=0.04),))"}),
            new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "fig"}),
            new_output("display_data", data={
                WIDGET_VIEW: {"model_id": "def", "version_major": 2, "version_minor": 0},
                "text/plain": "[interactive explorer: figure drawn at T = 4.0]"}),
            new_output("display_data", data={
                WIDGET_VIEW: {"model_id": "ghi", "version_major": 2, "version_minor": 0},
                "text/plain": "epoch 1/4:   0%|          | 0/6 [00:00<?, ?it/s]"}),
        ]),
    ])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    (tmp_path / "course").mkdir()
    nbformat.write(nb, tmp_path / "course" / "09_explorer.ipynb")
    executed = tmp_path / "executed"
    executed.mkdir()
    nbformat.write(nb, executed / "09_explorer.ipynb")  # as if make course had run it
    build_book(tmp_path / "course", tmp_path / "book", executed, execute=False,
               log=lambda line: None)
    page = (tmp_path / "book" / "09_explorer.html").read_text(encoding="utf-8")
    assert "An interactive control is here in JupyterLab" in page
    assert "widget-state" not in page and "widget-view" not in page
    assert "FloatSlider" not in page and 'src="data:image/png;base64,' in page
    assert "[interactive explorer: figure drawn at T = 4.0]" in page  # its own fallback text
    assert "epoch 1/4" not in page  # a tqdm bar, frozen at 0%, is left out
    assert not [u for u in _resources(tmp_path / "book" / "09_explorer.html") if REMOTE.match(u)]
    index = (tmp_path / "book" / "index.html").read_text(encoding="utf-8")
    assert 'href="09_explorer.html"' in index and "Lesson 9 — Explorer" in index
