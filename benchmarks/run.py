"""Run dinolab's ratio benchmarks side by side and write ``benchmarks/RESULTS.md``.

Usage (from the repository root)::

    make bench                          # installs the optional `bench` extra (lightly), then:
    python benchmarks/run.py            # all benchmarks, RESULTS.md rewritten
    python benchmarks/run.py --only ema --output /tmp/RESULTS.md --quick

Every benchmark times a dinolab implementation against a plain baseline IN THE SAME RUN, on
the same inputs, interleaving the two (A B, B A, A B, ...) so that a machine that speeds up or
slows down during the run (other processes, thermal limits) affects both alike. What is
reported is the RATIO of median times, which carries over between machines far better than
absolute times; absolute times are listed too. Beside the ratio, a benchmark may report
dinolab's rate as a fraction of a limit timed in the same rounds (:class:`Reference`: memory
bandwidth, GEMM throughput, a peer's throughput), which says how much is left to win on any
machine. Before timing, each benchmark checks that both sides compute the same thing, so a
fast-but-wrong implementation cannot win.

Every ``benchmarks/bench_<name>.py`` that defines ``run(quick: bool) -> BenchResult`` is
run, the three core ones (``ema``, ``multicrop``, ``dino_loss``) first. A benchmark that raises
(a failed correctness check, say) is reported as FAILED in the table and makes the exit status
1; the others still run.

This module also holds what the benchmarks share: :class:`BenchResult`, :class:`Reference`,
:class:`Timing`, :func:`time_interleaved`, :func:`skipped_without` and :func:`print_result`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The core benchmarks run first, in this order; any other benchmarks/bench_<name>.py follows.
CORE = ("ema", "multicrop", "dino_loss")


def discover() -> list[str]:
    """Names of the benchmarks: every ``benchmarks/bench_<name>.py``, core ones first."""
    found = sorted(path.stem.removeprefix("bench_") for path in HERE.glob("bench_*.py"))
    return [name for name in CORE if name in found] + [n for n in found if n not in CORE]


@dataclass
class Reference:
    """A rate measured in the same run, on the same machine, that the candidate is held to.

    Either a limit of the machine (memory bandwidth from a flat ``lerp_``, GEMM throughput)
    or a peer's throughput (kornia's batched augmentation). ``fraction = achieved / rate``.

    Attributes:
        what: what the rate is and how it was measured.
        unit: unit of ``rate`` and ``achieved`` (``GB/s``, ``GFLOP/s``, ``images/s``).
        rate: the reference rate (median over interleaved rounds).
        achieved: the candidate's rate in the same unit.
        goal: the fraction to reach, or None when it is only reported.
    """

    what: str
    unit: str
    rate: float
    achieved: float
    goal: float | None = None

    @property
    def fraction(self) -> float:
        """``achieved / rate``."""
        return self.achieved / self.rate

    def status(self) -> str:
        if self.goal is None:
            return "reported"
        return "met" if self.fraction >= self.goal else "NOT met"


@dataclass
class BenchResult:
    """One row of the results table.

    Attributes:
        name: short name of the benchmark.
        baseline: what the dinolab code is compared against.
        candidate: the dinolab code.
        baseline_s: median seconds per call of the baseline.
        candidate_s: median seconds per call of the candidate.
        goal: the ratio ``baseline_s / candidate_s`` the candidate should reach.
        baseline_best_s: fastest round of the baseline (seconds per call).
        candidate_best_s: fastest round of the candidate.
        round_ratios: the ratio of every interleaved round (its spread shows the noise).
        check: how the two sides were checked to agree, and the result.
        config: sizes and settings of the run.
        notes: anything a reader needs to interpret the number.
        skipped: why the benchmark did not run (then the timings are NaN).
        error: the exception that stopped the benchmark, e.g. a failed correctness check.
        load_after: the machine's 1-minute load average when the benchmark finished.
        references: rates measured in the same run that the candidate's rate is compared with
            (see :class:`Reference`).
    """

    name: str
    baseline: str
    candidate: str
    baseline_s: float = float("nan")
    candidate_s: float = float("nan")
    goal: float = 1.0
    baseline_best_s: float = float("nan")
    candidate_best_s: float = float("nan")
    round_ratios: list[float] = field(default_factory=list)
    check: str = ""
    config: str = ""
    notes: str = ""
    skipped: str | None = None
    error: str | None = None
    load_after: float = float("nan")
    references: list[Reference] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Speed-up of the candidate: baseline time / candidate time (> 1 means faster)."""
        return self.baseline_s / self.candidate_s

    @property
    def best_ratio(self) -> float:
        """Ratio of the fastest rounds: less sensitive to other processes, which only add time."""
        return self.baseline_best_s / self.candidate_best_s

    @property
    def met(self) -> bool:
        return self.skipped is None and self.error is None and self.ratio >= self.goal

    def status(self) -> str:
        if self.error is not None:
            return "FAILED"
        if self.skipped is not None:
            return "skipped"
        return "met" if self.met else "NOT met"


def skipped_without(package: str, name: str, baseline: str, candidate: str,
                    goal: float) -> BenchResult | None:
    """A skipped :class:`BenchResult` when the optional ``package`` is missing, else None.

    lightly and kornia are the ``bench`` extra (``pip install -e '.[bench]'``, which
    ``make bench`` runs); a benchmark that needs one says so instead of failing.
    """
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        return None
    return BenchResult(
        name=name, baseline=baseline, candidate=candidate, goal=goal,
        skipped=(
            f"{package} is not installed. It is in the optional `bench` extra: run `make "
            "bench`, or `pip install -e '.[bench]'` in the environment, then run again."
        ),
    )


@dataclass
class Timing:
    """Result of :func:`time_interleaved`: seconds per call, by function name."""

    median: dict[str, float]
    best: dict[str, float]
    round_ratios: list[float]

    def fields(self, baseline: str, candidate: str) -> dict[str, object]:
        """The timing fields of a :class:`BenchResult`."""
        return {
            "baseline_s": self.median[baseline],
            "candidate_s": self.median[candidate],
            "baseline_best_s": self.best[baseline],
            "candidate_best_s": self.best[candidate],
            "round_ratios": self.round_ratios,
        }


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int = 15,
    inner: int = 1,
    warmup: int = 2,
) -> Timing:
    """Median seconds per call of each function, measured in alternating order.

    Each of ``repeats`` rounds times ``inner`` consecutive calls of every function; odd rounds
    run the functions in reverse order, so no side always runs first (after another has
    warmed or cooled the caches).

    Args:
        fns: two or more named zero-argument callables, ``{baseline: f, candidate: g, ...}``;
            further ones (a machine limit such as a flat ``lerp_`` or a GEMM) are timed in the
            same rounds.
        repeats: timed rounds.
        inner: calls per timed sample (for functions much faster than a millisecond).
        warmup: untimed calls of each function first (allocator, thread pool, lazy init).

    Returns:
        :class:`Timing` with the median and the fastest seconds per call of each function and
        the baseline/candidate ratio of every round (the first function is the baseline, the
        second the candidate).
    """
    if len(fns) < 2:
        raise ValueError(f"time_interleaved: expected at least 2 functions, got {len(fns)}")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - start) / inner)
    ratios = [a / b for a, b in zip(samples[names[0]], samples[names[1]], strict=True)]
    return Timing(
        median={name: statistics.median(values) for name, values in samples.items()},
        best={name: min(values) for name, values in samples.items()},
        round_ratios=ratios,
    )


# CPU flags that decide which kernels run: vector width, native bf16 and matrix units.
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16",
         "amx_fp16")


def cpu_flags() -> str:
    """Which of :data:`FLAGS` ``/proc/cpuinfo`` lists, e.g. ``avx512f yes, amx_bf16 no``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    found: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            found = set(line.split(":", 1)[1].split())
            break
    return ", ".join(f"{flag} {'yes' if flag in found else 'no'}" for flag in FLAGS)


def print_result(result: BenchResult) -> None:
    """Print one benchmark's result (what ``python benchmarks/bench_<name>.py`` shows)."""
    if result.skipped is not None:
        print(f"skipped: {result.skipped}")
        return
    print(f"{result.baseline}: {_fmt_time(result.baseline_s)}; {result.candidate}: "
          f"{_fmt_time(result.candidate_s)}; ratio {result.ratio:.2f}x (goal {result.goal:g}x)")
    print(f"check: {result.check}")
    print(f"config: {result.config}")
    if result.notes:
        print(f"notes: {result.notes}")
    for ref in result.references:
        print(f"{ref.what}: {_fmt_rate(ref.rate, ref.unit)}; dinolab "
              f"{_fmt_rate(ref.achieved, ref.unit)} = {ref.fraction:.2f} of it ({ref.status()})")


def machine_info() -> dict[str, str]:
    """CPU model and flags, core counts, load, Python and torch versions, torch threads."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    try:
        load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "unknown"
    return {
        "CPU": cpu,
        "CPU flags": cpu_flags(),
        "cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "load average (1/5/15 min) at start": load,
        "OS": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "Python": platform.python_version(),
        "torch": f"{torch.__version__} (CPU; {torch.get_num_threads()} intra-op threads; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})",
    }


def _fmt_time(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "n/a"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _fmt_ratio(r: BenchResult) -> str:
    return "n/a" if r.skipped is not None or r.error is not None else f"{r.ratio:.2f}x"


def _spread(r: BenchResult) -> str:
    if r.skipped is not None or r.error is not None or not r.round_ratios:
        return "n/a"
    q = statistics.quantiles(r.round_ratios, n=4) if len(r.round_ratios) >= 2 else r.round_ratios
    return f"{q[0]:.2f}-{q[-1]:.2f}x"


def _best(r: BenchResult) -> str:
    return "n/a" if r.skipped is not None or r.error is not None else f"{r.best_ratio:.2f}x"


def table(results: list[BenchResult]) -> str:
    """Markdown table of the results."""
    lines = [
        "| benchmark | baseline | baseline time | dinolab | dinolab time | ratio | "
        "rounds (IQR) | ratio of best rounds | goal | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.baseline} | {_fmt_time(r.baseline_s)} | {r.candidate} | "
            f"{_fmt_time(r.candidate_s)} | {_fmt_ratio(r)} | {_spread(r)} | {_best(r)} | "
            f">= {r.goal:g}x | {r.status()} |"
        )
    return "\n".join(lines)


def _fmt_rate(value: float, unit: str) -> str:
    return f"{value:.3g} {unit}" if value == value else "n/a"


def reference_table(results: list[BenchResult]) -> str:
    """Markdown table of every benchmark's rates against those measured in the same run."""
    lines = [
        "| benchmark | reference (measured in the same run) | its rate | dinolab's rate | "
        "fraction | goal | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.skipped is not None or r.error is not None:
            continue
        for ref in r.references:
            goal = f">= {ref.goal:g}" if ref.goal is not None else "-"
            lines.append(
                f"| {r.name} | {ref.what} | {_fmt_rate(ref.rate, ref.unit)} | "
                f"{_fmt_rate(ref.achieved, ref.unit)} | {ref.fraction:.2f} | {goal} | "
                f"{ref.status()} |"
            )
    return "\n".join(lines)


def _load_1min() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def write_results(results: list[BenchResult], path: Path, argv: list[str], elapsed: float,
                  info: dict[str, str]) -> None:
    """Write the Markdown report: command, date, machine, table, then details per benchmark."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/run.py`; do not edit by hand, run it again. "
        "See `benchmarks/README.md` for what each benchmark measures.",
        "",
        "- Command: `make bench` (which runs `python benchmarks/run.py`); this file came from "
        f"`{' '.join(['python', *argv])}`",
        f"- Date: {now}; whole run {elapsed:.0f} s",
    ]
    out += [f"- {key}: {value}" for key, value in info.items()]
    out += [
        "",
        "Times are medians over interleaved rounds; ratio = baseline median / dinolab median "
        "(above 1: dinolab is faster), and the goal and status refer to it. "
        "`rounds (IQR)` is the inter-quartile range of the per-round ratios, a measure of "
        "the noise; `ratio of best rounds` compares the fastest round of each side, which "
        "other processes on the machine disturb least. Goals are targets, not test "
        "thresholds: a goal that is not met is reported as such. A load average above the "
        "number of cores means other processes competed for them during the run: absolute "
        "times then grow several-fold and ratios become noisy.",
        "",
        table(results),
        "",
        "Beside each ratio, dinolab's rate as a fraction of a rate measured in the same run on "
        "the same machine: a limit of the machine (memory bandwidth, GEMM throughput), which "
        "says how much is left to win on any CPU, or a peer's throughput.",
        "",
        reference_table(results),
        "",
    ]
    for r in results:
        out += [f"## {r.name}", ""]
        if r.error is not None:
            out += [f"Failed: `{r.error}`", ""]
            continue
        if r.skipped is not None:
            out += [f"Skipped: {r.skipped}", ""]
            continue
        out += [f"- Configuration: {r.config}", f"- Correctness check: {r.check}"]
        if r.notes:
            out.append(f"- Notes: {r.notes}")
        out.append(f"- 1-minute load average when it finished: {r.load_after:.2f}")
        out.append("")
    path.write_text("\n".join(out))


def main(argv: list[str] | None = None) -> int:
    available = discover()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(available),
                        help=f"comma-separated subset of {', '.join(available)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="few repeats, for checking that the benchmarks run (numbers noisy)")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md",
                        help="where to write the Markdown report (default: benchmarks/RESULTS.md)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (default 0: torch's own choice, one per "
                        "core); 1 on a machine shared with other jobs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(selected) - set(available))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {available}")

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    import importlib

    info = machine_info()
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    results: list[BenchResult] = []
    start = time.perf_counter()
    for name in selected:
        print(f"\n== bench_{name} ==", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"bench_{name}")
            result: BenchResult = module.run(quick=args.quick)
        except Exception as exc:  # reported in the table and in the exit status, not hidden
            traceback.print_exc()
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            result = BenchResult(name=name, baseline="?", candidate="?", error=message)
        result.load_after = _load_1min()
        print(f"   {result.status()}: ratio {_fmt_ratio(result)} (goal {result.goal:g}x), "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        results.append(result)
    elapsed = time.perf_counter() - start
    try:
        info["load average (1/5/15 min) at end"] = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        pass
    busiest = max([r.load_after for r in results if r.load_after == r.load_after], default=0.0)
    if busiest > (os.cpu_count() or 1):
        info["WARNING"] = (
            f"the 1-minute load average reached {busiest:.2f} on {os.cpu_count()} logical "
            "cores: other processes competed for the CPU during this run, so its times and "
            "ratios are indicative only; run again on a quiet machine"
        )
    print()
    print(table(results))
    print()
    print(reference_table(results))
    cli = [os.path.relpath(Path(sys.argv[0]).resolve(), ROOT), *(argv if argv is not None
                                                                 else sys.argv[1:])]
    write_results(results, args.output, cli, elapsed, info)
    print(f"\nwrote {args.output}")
    return 1 if any(r.error is not None for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
