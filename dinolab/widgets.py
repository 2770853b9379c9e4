"""Interactive explorers for the lessons: a figure that is redrawn when a slider moves.

A lesson writes a short drawing function ``draw(fig, **values)`` that fills a matplotlib
:class:`~matplotlib.figure.Figure` for one setting of its knobs, and hands it to
:func:`explore` with one :class:`Slider` (or :class:`Choice`) per knob::

    def draw(fig, momentum):
        ax = fig.subplots()
        ...

    explore(draw, momentum=Slider(0.9, 0.999, 0.001, value=0.996))

Displaying the returned :class:`Explorer` (as the last line of a cell) shows

1. the figure drawn at the default values, as an ordinary PNG output. That output is all a
   headless run keeps (``make course``, CI's nbclient, a static web page): there the explorer
   is a plain static figure;
2. below it, the sliders (ipywidgets). In a live front-end (JupyterLab, Notebook 7, VS Code)
   moving one redraws the figure and replaces the PNG above *in place*, through IPython's
   display-id mechanism (``update_display_data``), so the cell shows one figure whatever the
   front-end.

No guess about "headless or not" is needed: both parts are always sent, and a front-end that
cannot show widgets shows the figure and a one-line text in place of the sliders (which name
the values drawn). Without ipywidgets installed (it comes with the ``course`` extra) only the
figure is shown, with a hint. The figure is a :class:`~matplotlib.figure.Figure` created
without pyplot, so the inline backend never shows it a second time and redraws do not
accumulate figures.

Examples:
    >>> def draw(fig, tau):
    ...     ax = fig.subplots()
    ...     ax.plot([0, 1], [0, tau])
    >>> ex = explore(draw, tau=Slider(0.1, 1.0, 0.1, value=0.5))
    >>> ex.values
    {'tau': 0.5}
    >>> line = ex.figure.axes[0].lines[0]
    >>> float(line.get_ydata()[1])
    0.5
    >>> _ = ex.update(tau=0.9)  # what moving the slider does
    >>> float(ex.figure.axes[0].lines[0].get_ydata()[1])
    0.9
"""

from __future__ import annotations

import base64
import inspect
import io
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure

__all__ = ["Choice", "Explorer", "Slider", "explore"]


@dataclass(frozen=True)
class Slider:
    """A numeric knob: ``min <= value <= max`` in steps of ``step``.

    Args:
        min: smallest value.
        max: largest value.
        step: distance between two positions of the slider. ``None`` gives 100 positions
            (for ``log=True``: 100 positions in ``log10``).
        value: the default, drawn by a headless run; ``None`` takes ``min``.
        log: place the positions evenly in ``log10`` (for temperatures, learning rates);
            ``step`` is then a step in ``log10``.
        description: the label beside the slider; ``None`` uses the argument's name.
        readout: a format for the printed value, e.g. ``".4f"``; ``None`` lets ipywidgets choose.

    A slider whose ``min``, ``max``, ``step`` and ``value`` are all ints gives ints.
    """

    min: float
    max: float
    step: float | None = None
    value: float | None = None
    log: bool = False
    description: str | None = None
    readout: str | None = None

    def __post_init__(self) -> None:
        for name in ("min", "max", "step", "value"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, numbers.Real) or isinstance(v, bool)):
                raise ValueError(f"Slider: {name}={v!r} must be a number")
        if not self.min < self.max:
            raise ValueError(f"Slider: min={self.min!r} must be smaller than max={self.max!r}")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"Slider: step={self.step!r} must be > 0")
        if self.log and self.min <= 0:
            raise ValueError(f"Slider: a log slider needs min > 0, got min={self.min!r}")
        if self.value is not None and not self.min <= self.value <= self.max:
            raise ValueError(
                f"Slider: value={self.value!r} is outside [min, max] = [{self.min!r}, {self.max!r}]"
            )

    @property
    def default(self) -> float:
        """The value drawn first: ``value``, or ``min`` when none was given."""
        return self.min if self.value is None else self.value

    @property
    def is_int(self) -> bool:
        """Whether the slider gives ints (all its numbers are ints and it is not log-scaled)."""
        numbers_given = [self.min, self.max, self.step, self.value]
        return not self.log and all(
            v is None or isinstance(v, numbers.Integral) for v in numbers_given
        )

    def widget(self, name: str, continuous: bool) -> Any:
        """The ipywidgets slider for this knob (ipywidgets must be importable)."""
        import ipywidgets as W

        common = {
            "description": self.description or name,
            "continuous_update": continuous,
            "style": {"description_width": "initial"},
            "layout": W.Layout(width="420px"),
        }
        if self.readout is not None:
            common["readout_format"] = self.readout
        if self.log:
            lo, hi = math.log10(self.min), math.log10(self.max)
            step = self.step if self.step is not None else (hi - lo) / 100
            return W.FloatLogSlider(
                value=self.default, base=10, min=lo, max=hi, step=step, **common
            )
        if self.is_int:
            step = self.step if self.step is not None else max(1, (self.max - self.min) // 100)
            return W.IntSlider(value=self.default, min=self.min, max=self.max, step=step, **common)
        step = self.step if self.step is not None else (self.max - self.min) / 100
        return W.FloatSlider(value=self.default, min=self.min, max=self.max, step=step, **common)


@dataclass(frozen=True)
class Choice:
    """A knob with a few named options (a drop-down list).

    Args:
        options: the values to choose from (strings, numbers...).
        value: the default, drawn by a headless run; ``None`` takes the first option.
        description: the label; ``None`` uses the argument's name.
        slider: show a slider over the options (``SelectionSlider``: for ordered values
            such as momenta 0.9, 0.99, 0.999) instead of a drop-down list.
    """

    options: Sequence[Any]
    value: Any = None
    description: str | None = None
    slider: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.options, str) or len(self.options) == 0:
            raise ValueError(f"Choice: options={self.options!r} must be a non-empty list")
        if self.value is not None and self.value not in self.options:
            raise ValueError(f"Choice: value={self.value!r} is not one of {list(self.options)}")

    @property
    def default(self) -> Any:
        """The value drawn first: ``value``, or the first option."""
        return self.options[0] if self.value is None else self.value

    def widget(self, name: str, continuous: bool) -> Any:
        """The ipywidgets drop-down (or selection slider) for this knob."""
        import ipywidgets as W

        common = {
            "options": list(self.options),
            "value": self.default,
            "description": self.description or name,
            "style": {"description_width": "initial"},
        }
        if self.slider:
            return W.SelectionSlider(
                continuous_update=continuous, layout=W.Layout(width="420px"), **common
            )
        return W.Dropdown(**common)


Control = Slider | Choice


def _ipywidgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class Explorer:
    """A figure drawn by ``draw(fig, **values)`` and the sliders that change ``values``.

    Build it with :func:`explore`. Attributes:

    * ``figure``: the :class:`~matplotlib.figure.Figure`, redrawn in place on every change;
    * ``values``: the current value of every knob, by name;
    * ``controls``: the ipywidgets control of every knob, by name (empty without ipywidgets).
      Setting ``controls[name].value`` redraws, exactly as moving the slider does;
    * ``widget``: the box holding the controls and a status line (``None`` without ipywidgets).
    """

    def __init__(
        self,
        draw: Callable[..., Any],
        controls: dict[str, Control],
        *,
        figsize: tuple[float, float] = (10.0, 3.6),
        continuous: bool = False,
        dpi: float = 100.0,
    ) -> None:
        if not callable(draw):
            raise TypeError(f"explore: draw={draw!r} must be a function draw(fig, **values)")
        if not controls:
            raise ValueError("explore: give at least one knob, e.g. tau=Slider(0.01, 1.0)")
        for name, control in controls.items():
            if not isinstance(control, Slider | Choice):
                raise TypeError(
                    f"explore: knob {name!r} is {control!r}; expected Slider(...) or Choice(...)"
                )
        _check_signature(draw, list(controls))
        self.draw = draw
        self.knobs = dict(controls)
        self.values: dict[str, Any] = {name: c.default for name, c in controls.items()}
        self.dpi = dpi
        self.figure = Figure(figsize=figsize, dpi=dpi, layout="constrained")
        self._handles: list[Any] = []
        self.controls: dict[str, Any] = {}
        self.widget: Any = None
        self._status: Any = None
        self._syncing = False
        self._redraw()  # the static figure, at the defaults
        if _ipywidgets_available():
            self._build_widgets(continuous)

    # -- drawing ---------------------------------------------------------------------------
    def _redraw(self) -> None:
        self.figure.clear()
        self.draw(self.figure, **self.values)
        if self._handles:
            shown = _png_display(self.png(), self.summary())
            for handle in self._handles:
                handle.update(shown, raw=True)

    def update(self, **values: Any) -> Figure:
        """Set some knobs (by name), redraw, move the sliders to match; return the figure.

        Raises:
            ValueError: a name is not a knob of this explorer.
        """
        unknown = sorted(set(values) - set(self.values))
        if unknown:
            raise ValueError(
                f"Explorer.update: {unknown} are not knobs; it has {list(self.values)}"
            )
        self.values.update(values)
        self._redraw()
        self._syncing = True
        try:
            for name, value in values.items():
                if name in self.controls:
                    self.controls[name].value = value
        finally:
            self._syncing = False
        self._set_status("")
        return self.figure

    def png(self) -> bytes:
        """The figure as PNG bytes (what the notebook shows)."""
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=self.dpi)
        return buf.getvalue()

    # -- widgets ---------------------------------------------------------------------------
    def _build_widgets(self, continuous: bool) -> None:
        import ipywidgets as W

        for name, knob in self.knobs.items():
            control = knob.widget(name, continuous)
            control.observe(self._on_change(name), names="value")
            self.controls[name] = control
        self._status = W.HTML(value="")
        self.widget = W.VBox([*self.controls.values(), self._status])

    def _on_change(self, name: str) -> Callable[[dict[str, Any]], None]:
        def callback(change: dict[str, Any]) -> None:
            if self._syncing:
                return
            self.values[name] = change["new"]
            try:
                self._redraw()
            except Exception as err:  # shown beside the sliders: a callback's error is invisible
                self._set_status(
                    f"<span style='color:#b00'>redraw failed: {type(err).__name__}: {err}</span>"
                )
            else:
                self._set_status("")

        return callback

    def _set_status(self, html: str) -> None:
        if self._status is not None:
            self._status.value = html

    def summary(self) -> str:
        """One line naming the values drawn, e.g. ``"momentum = 0.996"``."""
        return ", ".join(f"{name} = {value!r}" for name, value in self.values.items())

    # -- display ---------------------------------------------------------------------------
    def _ipython_display_(self) -> None:
        from IPython.display import display

        shown = _png_display(self.png(), self.summary())
        self._handles.append(display(shown, raw=True, display_id=True))
        if self.widget is None:
            display(
                {
                    "text/plain": f"Explorer drawn at {self.summary()} (install ipywidgets, the "
                    "`course` extra, to move the sliders)"
                },
                raw=True,
            )
            return
        bundle = dict(self.widget._repr_mimebundle_())
        # What a front-end without widgets (a static page, a terminal) prints instead.
        bundle["text/plain"] = (
            f"[interactive explorer: figure drawn at {self.summary()}; "
            "run the notebook in JupyterLab to move the sliders]"
        )
        display(bundle, raw=True)

    def __repr__(self) -> str:
        return f"Explorer({self.summary()})"


def _png_display(png: bytes, summary: str) -> dict[str, Any]:
    """A display bundle: the PNG, and a line of text for front-ends without images."""
    return {
        "image/png": base64.b64encode(png).decode("ascii"),
        "text/plain": f"<explorer figure at {summary}>",
    }


def _check_signature(draw: Callable[..., Any], names: list[str]) -> None:
    try:
        sig = inspect.signature(draw)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    missing = [n for n in names if n not in accepted]
    if missing:
        raise TypeError(
            f"explore: {getattr(draw, '__name__', draw)}{sig} does not take the knobs {missing}; "
            "it must be draw(fig, " + ", ".join(names) + ")"
        )


def explore(
    draw: Callable[..., Any],
    *,
    figsize: tuple[float, float] = (10.0, 3.6),
    continuous: bool = False,
    **controls: Control,
) -> Explorer:
    """An interactive figure: ``draw(fig, **values)`` redrawn whenever a knob moves.

    The figure is drawn once at the knobs' defaults when the explorer is made, so a headless
    run of the notebook shows that static figure; in JupyterLab the sliders shown below it
    redraw it in place. Show it by making it the last expression of a cell.

    Args:
        draw: ``draw(fig, **values)`` draws into the empty :class:`~matplotlib.figure.Figure`
            ``fig`` (``fig.subplots(...)``, never ``plt.figure``); it is called again, on the
            cleared figure, after every change.
        figsize: figure size in inches ``(width, height)``.
        continuous: redraw while a slider is dragged (cheap drawings) rather than when it is
            released (the default: each redraw renders a PNG and sends it to the browser).
        **controls: one :class:`Slider` or :class:`Choice` per keyword argument of ``draw``.

    Returns:
        The :class:`Explorer` (its ``update(**values)`` is what a slider change calls).

    Raises:
        ValueError: no knob given; TypeError: a knob is not a Slider / Choice, or ``draw``
            does not accept every knob as a keyword argument.

    Examples:
        >>> import numpy as np
        >>> def draw(fig, tau):
        ...     ax = fig.subplots()
        ...     z = np.array([1.0, 0.5, 0.0])
        ...     p = np.exp(z / tau) / np.exp(z / tau).sum()
        ...     ax.bar(range(3), p)
        ...     ax.set(title=f"softmax(z / {tau:g})", xlabel="k", ylabel="p_k", ylim=(0, 1))
        >>> ex = explore(draw, tau=Slider(0.05, 2.0, 0.05, value=1.0))
        >>> ex.values["tau"], len(ex.figure.axes[0].patches)
        (1.0, 3)
    """
    return Explorer(draw, controls, figsize=figsize, continuous=continuous)
