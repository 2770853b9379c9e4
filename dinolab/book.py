"""The course as a static website, built offline: ``make book`` / ``python -m dinolab.book``.

Every lesson of ``course/`` becomes ``<out>/<lesson>.html``: nbconvert's JupyterLab HTML of the
lesson *as executed* (the copy ``make course`` writes to ``build/course/``; a lesson whose
executed copy is missing or older than its source is run first). Figures are embedded in the
page as data URIs. ``<out>/index.html`` is the contents page: syllabus, prerequisites, the time
of each lesson, a glossary and the references with their arXiv ids.

Nothing is fetched from the network when a page opens. Math is typeset by a local copy of
MathJax 2 (the one the ``jupyter-server-mathjax`` package ships) in ``<out>/mathjax/``; the
pages carry no require.js, no Jupyter-widgets loader and no Mermaid loader (the three things
nbconvert's template would fetch from a CDN). A widget shows its text fallback (an explorer
says which setting its figure shows) or a note saying to open the lesson in JupyterLab; the
static figure a lesson draws beside it stays; tqdm's progress-bar widgets are left out.

Why nbconvert and not Jupyter Book 2 / MyST: ``mystmd`` downloads its site theme when it
builds, so it fails on a machine without a network; nbconvert builds from what ``make install``
installs, about 2 s a lesson.

Examples:
    Build the site from ``make course``'s executed lessons (running the stale ones)::

        python -m dinolab.book

    Pages straight from the committed, unexecuted notebooks (seconds; no outputs)::

        python -m dinolab.book --no-execute --out build/book_quick
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "GLOSSARY",
    "MATHJAX_CONFIG",
    "REFERENCES",
    "Lesson",
    "build_book",
    "copy_mathjax",
    "localize_mathjax",
    "main",
    "mathjax_head",
    "mathjax_source",
    "read_syllabus",
]

# MathJax 2's combined configuration that jupyter-server-mathjax ships (TeX in, HTML-CSS out),
# plus "Safe" (no javascript: links or styles from the notebook's math).
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = (
    '<p class="dinolab-widget-note"><em>An interactive control is here in JupyterLab '
    "(<code>make lab</code>); this page shows the figure at its default setting.</em></p>"
)
# Reading speed for the "reading" estimate of the contents page (words a minute of technical
# prose with maths; code cells count their words too, as a reader goes through them).
WORDS_PER_MINUTE = 150

GLOSSARY: list[tuple[str, str]] = [
    ("self-supervised learning", "learning features from unlabelled images, with a training "
     "signal made from the images themselves (two views of one image should agree)."),
    ("self-distillation", "a student network trained to match a teacher that is built from the "
     "student itself (in DINO, an exponential moving average of its weights); no labels."),
    ("knowledge distillation (KD)", "training a small student to match the softened outputs of a "
     "larger, already trained teacher (Hinton et al.)."),
    ("student / teacher", "the two networks of DINO: the student sees every crop and gets "
     "gradients; the teacher sees the global crops only and is never trained by gradients."),
    ("EMA (exponential moving average)", "the teacher's update: "
     "$\\theta_t \\leftarrow m\\,\\theta_t + (1-m)\\,\\theta_s$ after every iteration, with the "
     "momentum $m$ rising from 0.996 towards 1 on a cosine."),
    ("multi-crop", "two large global crops and several small local crops of each image; the "
     "student must map a local crop to what the teacher says about a global one."),
    ("global crop / local crop", "a crop covering most of the image (DINO: 40-100% of its area, "
     "224 px) / a small one (5-40%, 96 px); only global crops go to the teacher."),
    ("projection head", "the MLP after the backbone (3 layers, GELU, an L2-normalised "
     "bottleneck and a weight-normalised last layer) whose $K$ outputs are the logits."),
    ("centering", "subtracting from the teacher's logits an EMA $c$ of their batch means, so "
     "that no single prototype takes over (one way to collapse)."),
    ("sharpening", "a low teacher temperature $\\tau_t$ in the teacher's softmax, so that its "
     "targets are not uniform (the other way to collapse)."),
    ("temperature", "$\\tau$ in $\\mathrm{softmax}(z/\\tau)$: small values sharpen the "
     "distribution, large ones flatten it."),
    ("collapse", "a degenerate solution in which every image gets the same output (one "
     "prototype, or a uniform distribution); the loss can be low while the features are useless."),
    ("entropy $h(p)$", "$-\\sum_k p_k \\log p_k$: 0 for a one-hot distribution, "
     "$\\log K$ for the uniform one; the course's collapse monitor (lesson 0's notation: "
     "lower-case $h$ for an entropy, $H$ with two arguments for a cross-entropy)."),
    ("cross-entropy $H(p, q)$", "$-\\sum_k p_k \\log q_k$; the DINO loss is the cross-entropy "
     "between the teacher's and the student's distributions, averaged over crop pairs."),
    ("KL divergence", "$\\mathrm{KL}(p\\,\\|\\,q) = H(p, q) - h(p)$; zero when the two "
     "distributions agree."),
    ("stop-gradient", "using a network's output as a fixed target: no gradient flows back "
     "through it (torch.no_grad() or .detach()); DINO's teacher and "
     "BYOL's target are behind one."),
    ("prototypes", "the $K$ outputs of the projection head's last layer, one unit vector each "
     "in DINO; the teacher's softmax over them is the target distribution."),
    ("InfoNCE / NT-Xent", "the contrastive loss of SimCLR and MoCo: classify the positive view "
     "among negatives by cosine similarity over a temperature."),
    ("negatives", "other images' views that a contrastive loss pushes away; DINO and BYOL "
     "need none."),
    ("ViT (Vision Transformer)", "a transformer over image patches: a patch embedding, a "
     "learned CLS token and position embeddings, then self-attention blocks."),
    ("patch embedding", "a convolution with stride equal to its kernel size that turns each "
     "$P\\times P$ patch into one token."),
    ("CLS token", "a learned token prepended to the patches; its final state is the image's "
     "feature, and its attention to the patches gives DINO's attention maps."),
    ("registers", "extra learned tokens (DINOv2 with registers) that take the 'storage' role "
     "some patch tokens otherwise take, cleaning the attention maps."),
    ("k-NN evaluation", "classifying test images by a weighted vote of their nearest training "
     "images in feature space (DINO's protocol: $k=20$, temperature 0.07)."),
    ("linear probe", "a linear classifier trained on frozen features."),
    ("iBOT", "a masked-image loss: the student sees an image with patches masked and "
     "predicts the teacher's patch-level outputs for them."),
    ("KoLeo", "a regulariser that spreads features by pushing up the log of each feature's "
     "distance to its nearest neighbour in the batch."),
    ("Sinkhorn-Knopp centering", "DINOv2's replacement for centering: a few normalisation "
     "rounds that make the teacher's batch assignments use every prototype equally (from SwAV)."),
    ("Log-Euclidean distance", "between symmetric positive definite matrices $A$, $B$: "
     "$\\|\\log A - \\log B\\|_F$, the Frobenius norm of the difference of matrix logarithms."),
]

# (short name, authors and title, year, arXiv id, where the course uses it)
REFERENCES: list[tuple[str, str, int, str, str]] = [
    ("DINO", "Caron et al., Emerging Properties in Self-Supervised Vision Transformers", 2021,
     "2104.14294", "lessons 0-4.3: the whole recipe; its Algorithm 1 in lesson 4.3"),
    ("DINOv2", "Oquab et al., DINOv2: Learning Robust Visual Features without Supervision", 2023,
     "2304.07193", "lessons 4.2-4.3 (per-iteration temperature, KoLeo, clipping) and 6: iBOT, "
     "KoLeo, Sinkhorn-Knopp, distilling a frozen teacher"),
    ("DINOv3", "Siméoni et al., DINOv3", 2025, "2508.10104",
     "lesson 6: storage tokens, RoPE and Gram anchoring; official checkpoints"),
    ("iBOT", "Zhou et al., iBOT: Image BERT Pre-Training with Online Tokenizer", 2021,
     "2111.07832", "lesson 6: the masked patch loss"),
    ("KoLeo", "Sablayrolles et al., Spreading Vectors for Similarity Search", 2018,
     "1806.03198", "lessons 4.3 and 6: the KoLeo regulariser"),
    ("KD", "Hinton, Vinyals and Dean, Distilling the Knowledge in a Neural Network", 2015,
     "1503.02531", "lessons 1 and 5: temperature, the $T^2$ factor, the transfer set"),
    ("SimCLR", "Chen et al., A Simple Framework for Contrastive Learning of Visual "
     "Representations", 2020, "2002.05709", "lessons 1 (NT-Xent) and 3.3 (the projection MLP)"),
    ("MoCo", "He et al., Momentum Contrast for Unsupervised Visual Representation Learning",
     2019, "1911.05722", "lesson 1: the queue and the momentum encoder"),
    ("BYOL", "Grill et al., Bootstrap Your Own Latent", 2020, "2006.07733",
     "lessons 1 (predictor and EMA target without negatives) and 3.1 (the cosine momentum)"),
    ("ViT", "Dosovitskiy et al., An Image is Worth 16x16 Words: Transformers for Image "
     "Recognition at Scale", 2020, "2010.11929", "lesson 2: patches, CLS token"),
    ("Registers", "Darcet et al., Vision Transformers Need Registers", 2023, "2309.16588",
     "lesson 6: register (storage) tokens and cleaner attention maps "
     "(experiments/dino_research.md tries them)"),
    ("SwAV", "Caron et al., Unsupervised Learning of Visual Features by Contrasting Cluster "
     "Assignments", 2020, "2006.09882", "lessons 3.2 (multi-crop) and 6 (Sinkhorn-Knopp)"),
    ("MeanTeacher", "Tarvainen and Valpola, Mean teachers are better role models: "
     "Weight-averaged consistency targets improve semi-supervised deep learning results", 2017,
     "1703.01780", "lessons 1, 3.1 and 5: a teacher that is an EMA of the student's weights"),
    ("ResNet", "He et al., Deep Residual Learning for Image Recognition", 2015, "1512.03385",
     "lesson 2: the ResNet backbone"),
    ("WeightNorm", "Salimans and Kingma, Weight Normalization: A Simple "
     "Reparameterization to Accelerate Training of Deep Neural Networks", 2016, "1602.07868",
     "lesson 3.3: the head's weight-normalised last layer"),
    ("RoFormer", "Su et al., RoFormer: Enhanced Transformer with Rotary Position Embedding",
     2021, "2104.09864", "lesson 6: rotary position embeddings (DINOv3's 2-D axial RoPE)"),
    ("BEiT", "Bao et al., BEiT: BERT Pre-Training of Image Transformers", 2021, "2106.08254",
     "lesson 6: masked image modelling, where iBOT's masked patch loss comes from"),
]

PREREQUISITES = [
    "Python and NumPy: functions, classes, array shapes and broadcasting.",
    "PyTorch basics: tensors, autograd, <code>nn.Module</code>, an optimiser step.",
    "A first course in deep learning: convolutions, a training loop, overfitting.",
    "Linear algebra and probability at first-year level: dot products, norms, softmax, "
    "entropy, the KL divergence (the glossary below recalls each one the course uses).",
    "No GPU and no network: every lesson runs on a laptop CPU on data that installs with "
    "the packages.",
]


@dataclass
class Lesson:
    """One row of the contents page.

    Attributes:
        number: the lesson's number as the syllabus writes it (``"3.1"``).
        notebook: file name in ``course/`` (``"03_1_student_teacher.ipynb"``).
        learn: the syllabus' "what you learn" cell (Markdown).
        exercise: the graded exercise cell (Markdown).
        run_time: the measured headless run time from course/README.md (Markdown).
    """

    number: str
    notebook: str
    learn: str = ""
    exercise: str = ""
    run_time: str = ""


def read_syllabus(readme: str | os.PathLike[str]) -> dict[str, Lesson]:
    """The lessons of course/README.md's syllabus tables, by notebook file name.

    A row counts when its second cell is a notebook name in backticks; its first cell is the
    number, the third what it teaches, the last two the graded exercise and the time.
    """
    rows: dict[str, Lesson] = {}
    for line in Path(readme).read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5:
            continue
        m = re.fullmatch(r"`([^`]+\.ipynb)`", cells[1])
        if not m:
            continue
        rows[m.group(1)] = Lesson(cells[0], m.group(1), cells[2], cells[-2], cells[-1])
    return rows


def mathjax_source() -> Path:
    """The folder of MathJax 2 that ``jupyter-server-mathjax`` installs (``MathJax.js`` in it).

    Raises:
        ModuleNotFoundError: the package is missing (the ``course`` extra installs it).
    """
    try:
        import jupyter_server_mathjax
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "dinolab.book: no local MathJax: pip install jupyter-server-mathjax "
            "(dinolab's 'course' extra has it; make install installs it)"
        ) from err
    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (static / "MathJax.js").is_file():
        raise FileNotFoundError(f"dinolab.book: {static} holds no MathJax.js")
    return static


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # same file system: no extra space
    except OSError:
        shutil.copy2(src, dst)


def copy_mathjax(dest: str | os.PathLike[str]) -> Path:
    """Put a copy of MathJax 2 at ``dest`` (hard links where possible); idempotent.

    Returns:
        ``dest`` as a Path; ``dest/MathJax.js`` is the script to load.
    """
    dest = Path(dest)
    src = mathjax_source()
    if (dest / "MathJax.js").is_file() and (
        (dest / "MathJax.js").stat().st_size == (src / "MathJax.js").stat().st_size
    ):
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, copy_function=_link_or_copy)
    return dest


def mathjax_head(url: str) -> str:
    """The ``<head>`` lines that load MathJax from ``url`` (relative, e.g. ``mathjax/MathJax.js``).

    ``$...$`` and ``\\(...\\)`` are inline math, ``$$...$$`` and ``\\[...\\]`` display math, as
    in JupyterLab. Output is HTML-CSS with the STIX-Web fonts, the only web fonts the local
    copy ships (MathJax's default TeX fonts would be looked for and not found).
    """
    return f"""<script type="text/x-mathjax-config">
MathJax.Hub.Config({{
  tex2jax: {{inlineMath: [['$', '$'], ['\\\\(', '\\\\)']],
            displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
            processEscapes: true, processEnvironments: true}},
  TeX: {{equationNumbers: {{autoNumber: "AMS", useLabelIds: true}}}},
  "HTML-CSS": {{availableFonts: [], webFont: "STIX-Web", imageFont: null,
               linebreaks: {{automatic: true}}}},
  showMathMenu: false, messageStyle: "none", displayAlign: "center"
}});
// Marks the page once the first typesetting is done (the browser tests wait for it).
MathJax.Hub.Register.StartupHook("End", function () {{
  document.documentElement.setAttribute("data-mathjax", "done");
}});
</script>
<script src="{html.escape(url)}?config={MATHJAX_CONFIG}"></script>"""


_REMOTE_MATHJAX = re.compile(
    r'<script[^>]*\bsrc="(?:https?:)?//[^"]*mathjax[^"]*"[^>]*>\s*</script>', re.IGNORECASE
)


def localize_mathjax(page: str | os.PathLike[str]) -> bool:
    """Make an HTML file load MathJax from a copy beside it instead of a CDN.

    The ``<script src=".../mathjax/...">`` that nbconvert's templates write is replaced by
    :func:`mathjax_head` pointing at ``mathjax/MathJax.js`` in the page's folder, and a copy of
    MathJax is put there (hard links where possible), so the page works when its folder is
    handed to someone offline. Used for nbgrader's feedback HTML.

    Returns:
        Whether the page loaded MathJax remotely (and was changed).
    """
    page = Path(page)
    text = page.read_text(encoding="utf-8")
    new, count = _REMOTE_MATHJAX.subn(lambda _: mathjax_head("mathjax/MathJax.js"), text, count=1)
    if not count:
        return False
    copy_mathjax(page.parent / "mathjax")
    page.write_text(new, encoding="utf-8")
    return True


_PAGE_CSS = """
nav.dinolab-nav { display: flex; justify-content: space-between; gap: 1em; flex-wrap: wrap;
  max-width: 1100px; margin: 0.5em auto; padding: 0.5em 1em; font-family: sans-serif;
  font-size: 14px; border-bottom: 1px solid #ddd; }
nav.dinolab-nav a { text-decoration: none; }
.dinolab-banner { max-width: 1100px; margin: 0.5em auto; padding: 0.5em 1em;
  background: #fff6d5; border: 1px solid #e8d58a; font-family: sans-serif; font-size: 14px; }
"""

_LESSON_TEMPLATE = """{%- extends 'index.html.j2' -%}
{% block html_head_js_requirejs %}{% endblock html_head_js_requirejs %}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block html_head_js_mathjax %}{{ resources.dinolab.mathjax }}{% endblock html_head_js_mathjax %}
{% block html_head_js_mermaidjs %}{% endblock html_head_js_mermaidjs %}
{% block extra_css %}<style type="text/css">{{ resources.dinolab.css }}</style>{% endblock %}
{%- block body_header -%}
{{ super() }}
{{ resources.dinolab.nav }}
{{ resources.dinolab.banner }}
{%- endblock body_header -%}
{% block body_footer %}
{{ resources.dinolab.nav }}
{{ super() }}
{% endblock body_footer %}
"""


def _exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"dinolab_book.html.j2": _LESSON_TEMPLATE})],
        template_file="dinolab_book.html.j2",
    )


_PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm's text: "epoch 1/4:   0%|          | 0/6"
_WIDGET_REPR = re.compile(r"^\w+\(children=")  # ipywidgets' default text: "VBox(children=..."


def _strip_widgets(nb) -> int:  # nbformat.NotebookNode, in place
    """Drop widget state and views (they need a CDN loader); return how many views were seen.

    A widget's own text fallback stays when it says something (the lessons' explorers write
    which setting their static figure shows); tqdm's progress bars, widgets once ipywidgets is
    installed, are dropped (their text is the bar at 0%); other widgets become a note.
    """
    from nbformat.v4 import new_output

    nb.metadata.pop("widgets", None)
    seen = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW not in data:
                outputs.append(out)
                continue
            seen += 1
            text = str(data.get("text/plain", "")).strip()
            if _PROGRESS_BAR.search(text):
                continue
            if text and not _WIDGET_REPR.match(text):
                outputs.append(new_output("display_data", data={"text/plain": text}))
            else:
                outputs.append(new_output("display_data", data={"text/html": WIDGET_NOTE}))
        cell.outputs = outputs
    return seen


def _title(nb, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def _words(nb) -> int:
    return sum(len(c.source.split()) for c in nb.cells)


def _md(text: str) -> str:
    """Inline Markdown (a syllabus cell) as HTML; ``$...$`` is left for MathJax."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    out = markdown2html_mistune(text).strip()
    if out.startswith("<p>") and out.endswith("</p>") and out.count("<p>") == 1:
        out = out[3:-4]
    return out


def _nav(prev: tuple[str, str] | None, nxt: tuple[str, str] | None) -> str:
    def link(item: tuple[str, str] | None, arrow: str) -> str:
        if item is None:
            return "<span></span>"
        href, title = item
        text = f"&larr; {html.escape(title)}" if arrow == "prev" else f"{html.escape(title)} &rarr;"
        return f'<a href="{html.escape(href)}" rel="{arrow}">{text}</a>'

    return (f'<nav class="dinolab-nav">{link(prev, "prev")}'
            f'<a href="index.html">Contents</a>{link(nxt, "next")}</nav>')


def _executed_copy(
    src: Path, executed_dir: Path, execute: bool, timeout: int, log
) -> Path | None:
    """The executed copy of ``src`` in ``executed_dir``, running it when stale; None: unexecuted."""
    copy = executed_dir / src.name
    if copy.is_file() and copy.stat().st_mtime >= src.stat().st_mtime:
        return copy
    if not execute:
        return None
    from dinolab.course_runner import run_lesson

    log(f"[book] running {src.name} (no executed copy in {executed_dir} newer than it) ...")
    result = run_lesson(src, executed_dir, timeout=timeout)
    if not result.ok:
        raise RuntimeError(f"dinolab.book: {src.name} failed when run: {result.error}")
    log(f"[book] ran {src.name} in {result.seconds:.0f} s")
    return result.executed


@dataclass
class _Page:
    lesson: Lesson
    href: str
    title: str
    words: int
    executed: bool
    widgets: int


def build_book(
    course_dir: str | os.PathLike[str] = "course",
    out_dir: str | os.PathLike[str] = "build/book",
    executed_dir: str | os.PathLike[str] = "build/course",
    *,
    execute: bool = True,
    only: Sequence[str] = (),
    timeout: int = 600,
    log=print,
) -> list[Path]:
    """Write the website: one page per lesson, ``index.html`` and ``mathjax/``.

    Args:
        course_dir: the folder of the lessons and their README.md (the syllabus).
        out_dir: the site's folder (created; pages in it are overwritten).
        executed_dir: where ``make course`` writes the executed lessons.
        execute: run a lesson whose executed copy is missing or stale (into ``executed_dir``);
            False renders such a lesson unexecuted, with a banner saying so.
        only: keep only lessons whose file name contains one of these strings.
        timeout: seconds each cell may run when a lesson is executed.
        log: called with one line per page.

    Returns:
        The written HTML files, ``index.html`` last.

    Raises:
        RuntimeError: a lesson failed when run.
    """
    import nbformat

    from dinolab.course_runner import discover_lessons

    course, out, executed_dir = Path(course_dir), Path(out_dir), Path(executed_dir)
    sources = discover_lessons(course, only)
    syllabus = read_syllabus(course / "README.md") if (course / "README.md").is_file() else {}
    out.mkdir(parents=True, exist_ok=True)
    copy_mathjax(out / "mathjax")
    exporter = _exporter()
    notebooks, pages = [], []
    for src in sources:
        copy = _executed_copy(src, executed_dir, execute, timeout, log)
        nb = nbformat.read(copy or src, as_version=4)
        lesson = syllabus.get(src.name) or Lesson(src.stem.split("_")[0].lstrip("0") or "0",
                                                  src.name)
        pages.append(_Page(lesson, src.stem + ".html", _title(nb, src.stem), _words(nb),
                           copy is not None, _strip_widgets(nb)))
        notebooks.append(nb)
    written = []
    for i, (nb, page) in enumerate(zip(notebooks, pages, strict=True)):
        start = time.perf_counter()
        prev = (pages[i - 1].href, pages[i - 1].title) if i else None
        nxt = (pages[i + 1].href, pages[i + 1].title) if i + 1 < len(pages) else None
        banner = "" if page.executed else (
            '<div class="dinolab-banner">This page shows the lesson <strong>without its '
            "outputs</strong> (it was built with <code>--no-execute</code>); run "
            "<code>make book</code> for the figures.</div>")
        body, _ = exporter.from_notebook_node(nb, resources={
            "metadata": {"name": page.title},
            "dinolab": {"mathjax": mathjax_head("mathjax/MathJax.js"), "css": _PAGE_CSS,
                        "nav": _nav(prev, nxt), "banner": banner},
        })
        path = out / page.href
        path.write_text(body, encoding="utf-8")
        written.append(path)
        log(f"[book] {page.href}: {time.perf_counter() - start:.1f} s"
            f"{'' if page.executed else ' (not executed)'}")
    index = out / "index.html"
    index.write_text(_index_html(pages), encoding="utf-8")
    written.append(index)
    log(f"[book] index.html: {len(pages)} lessons -> {index}")
    return written


def _index_html(pages: list[_Page]) -> str:
    from dinolab import __version__

    rows = []
    for p in pages:
        minutes = max(1, round(p.words / WORDS_PER_MINUTE))
        rows.append(
            f"<tr><td>{html.escape(p.lesson.number)}</td>"
            f'<td><a href="{html.escape(p.href)}">{html.escape(p.title)}</a></td>'
            f"<td>{_md(p.lesson.learn)}</td><td>{_md(p.lesson.exercise)}</td>"
            f"<td>{_md(p.lesson.run_time) or '&ndash;'}</td>"
            f"<td>about {minutes} min ({p.words} words)</td></tr>")
    glossary = "\n".join(
        f"<dt>{html.escape(term, quote=False)}</dt><dd>{html.escape(text, quote=False)}</dd>"
        for term, text in GLOSSARY)
    references = "\n".join(
        f'<li id="ref-{html.escape(key.lower())}"><strong>{html.escape(key)}</strong>: '
        f"{html.escape(title, quote=False)} ({year}). "
        f'<a href="https://arxiv.org/abs/{arxiv}">arXiv:{arxiv}</a>. '
        f"<em>In the course:</em> {html.escape(where, quote=False)}.</li>"
        for key, title, year, arxiv, where in REFERENCES)
    prereq = "\n".join(f"<li>{item}</li>" for item in PREREQUISITES)
    built = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8" />
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>dinolab: the course</title>
<style type="text/css">
body {{ font-family: sans-serif; max-width: 1100px; margin: 1em auto; padding: 0 1em;
  line-height: 1.5; color: #222; }}
table {{ border-collapse: collapse; width: 100%; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.5em; vertical-align: top; text-align: left; }}
th {{ background: #f2f2f2; }}
dt {{ font-weight: bold; margin-top: 0.5em; }}
code {{ background: #f4f4f4; padding: 0 0.2em; }}
footer {{ margin-top: 2em; font-size: 12px; color: #666; }}
</style>
{mathjax_head("mathjax/MathJax.js")}
</head>
<body>
<header>
<h1>dinolab: learn DINO by building it</h1>
<p>Self-supervised learning by self-distillation (DINO, DINOv2) and knowledge distillation,
taught as Jupyter notebooks that run on a laptop CPU, offline. These pages are the lessons as
executed by <code>make course</code>; to change a parameter and run them yourself, open them in
JupyterLab (<code>make lab</code>), and do the graded exercises in your own copy
(<code>make workspace</code>, then <code>make grade EXERCISE=work/...</code>).</p>
<p>On this page: <a href="#syllabus">syllabus</a> &middot;
<a href="#prerequisites">prerequisites</a> &middot; <a href="#glossary">glossary</a> &middot;
<a href="#references">references</a></p>
</header>
<main>
<h2 id="prerequisites">Prerequisites</h2>
<ul>
{prereq}
</ul>
<h2 id="syllabus">Syllabus</h2>
<p>Take the lessons in order. <em>Run</em> is the wall-clock time of a headless run of the
lesson on a 2-core CPU, kernel start included, as measured in <code>course/README.md</code>;
<em>reading</em> estimates the time to read the lesson once at {WORDS_PER_MINUTE} words a minute.
Doing the exercise and the questions adds to both.</p>
<table>
<thead><tr><th>#</th><th>lesson</th><th>what you learn</th><th>graded exercise</th>
<th>run</th><th>reading</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
<h2 id="glossary">Glossary</h2>
<dl>
{glossary}
</dl>
<h2 id="references">References</h2>
<ol>
{references}
</ol>
</main>
<footer>dinolab {html.escape(__version__)}; built {built} with <code>python -m dinolab.book</code>
(nbconvert, MathJax from a local copy: nothing on these pages is fetched from the network).
</footer>
</body>
</html>
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dinolab.book",
        description="Build the course website (static HTML, offline) from the executed lessons.",
    )
    parser.add_argument("--course-dir", default="course",
                        help="folder of the lesson notebooks and README.md (default: course)")
    parser.add_argument("--executed", default="build/course",
                        help="executed lessons, as `make course` writes them; stale or missing "
                             "ones are run into it (default: build/course)")
    parser.add_argument("--out", default="build/book", help="the site's folder (default: "
                        "build/book)")
    parser.add_argument("--no-execute", action="store_true",
                        help="render lessons without an executed copy as they are, unexecuted")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="only lessons whose file name contains TEXT (repeatable)")
    parser.add_argument("--timeout", type=int, default=600,
                        help="seconds each cell may run when a lesson is executed (default: 600)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        written = build_book(args.course_dir, args.out, args.executed,
                             execute=not args.no_execute, only=args.only, timeout=args.timeout)
    except (RuntimeError, FileNotFoundError, ValueError, ModuleNotFoundError) as err:
        print(err, file=sys.stderr)
        return 1
    print(f"[book] {len(written)} pages in {time.perf_counter() - start:.0f} s: "
          f"open {Path(args.out) / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
