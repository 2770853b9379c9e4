"""DINO on the dark shapes over held-out data seeds, against labels for the same CPU time.

Called by ``experiments/run.py --only dino_showcase`` (part of ``make experiments``). For each
data seed (1, 2 and 3 by default: none took part in choosing the recipe, which was tuned on
seed 100) and each budget (the full default run, and a run of about 10 CPU-minutes), it

1. runs ``dinolab train dino --seed S --data_seed S [--epochs E]`` (the defaults otherwise) in
   a subprocess and measures its teacher from the checkpoint file
   (:func:`dinolab.train.course_teacher.measure_teacher`: k-NN against raw pixels and the
   random initialisation the run started from; attention Jaccard against the random network
   and the centre prior);
2. trains the same backbone with the labels (cross-entropy through a linear layer, on the
   first global crop of the same augmentation) for the same training CPU time
   (:func:`train_supervised`) and measures it the same way;
3. measures where the teacher's head-averaged attention goes with no threshold
   (:func:`dinolab.train.course_teacher.measure_attention_shares`: the share of it on the
   object, against the random network, the centre prior and a uniform map, and the 60%-mass
   set's area over the object's), and the labelled network's share.

Each run's figures are saved as JSON under ``runs/experiments/showcase/`` and reused when
present, so seeds can be run one at a time, even in parallel (``--showcase_seeds 1`` beside
``--showcase_seeds 2``); ``--report_only`` writes the section from the finished runs alone,
with mean +- sd over the seeds it has.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from course_teacher import _child_cpu_s  # experiments/ is on the path (run.py's folder)

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "experiments" / "showcase"
OUT = ROOT / "benchmarks" / "experiments"
HELD_OUT_SEEDS = (1, 2, 3)
# Epochs of the two budgets: the default run (30) and one of about 10 CPU-minutes of training
# (about 42 CPU-s per epoch on the 2-core EPYC of session 8).
BUDGET_EPOCHS = {"full": None, "10min": 14}


def _default_style() -> str:
    """The data ``dinolab train dino`` trains on by default (its ``--shapes_style``)."""
    from dinolab.train.recipes.dino import DINOConfig

    return DINOConfig().shapes_style


# Settings that differ between the runs of one report by design; every other setting of
# ``dinolab train dino`` must equal today's default for a finished run to be reused.
_PER_RUN = ("output_dir", "seed", "data_seed", "epochs", "progress", "num_images",
            "num_eval_images")


def _default_recipe() -> dict[str, Any]:
    """Today's ``dinolab train dino`` defaults, as JSON would store them, minus :data:`_PER_RUN`."""
    from dataclasses import asdict

    from dinolab.train.recipes.dino import DINOConfig

    saved = json.loads(json.dumps(asdict(DINOConfig())))
    return {k: v for k, v in saved.items() if k not in _PER_RUN}


def _run_recipe(out_dir: Path) -> dict[str, Any] | None:
    """The settings of the run in ``out_dir`` minus :data:`_PER_RUN` (None: no config)."""
    config = out_dir / "config.json"
    if not config.is_file():
        return None
    return {k: v for k, v in json.loads(config.read_text()).items() if k not in _PER_RUN}


def _run_style(out_dir: Path) -> str | None:
    """The ``--shapes_style`` a run in ``out_dir`` trained on (None: no finished config)."""
    return (_run_recipe(out_dir) or {}).get("shapes_style")


def run_dino(seed: int, epochs: int | None, out_dir: Path, quick: bool) -> dict[str, Any]:
    """``dinolab train dino`` for one data seed; figures measured on its checkpoint."""
    from dinolab.train.course_teacher import measure_teacher

    flags = ["--output_dir", os.path.relpath(out_dir, ROOT), "--seed", str(seed),
             "--data_seed", str(seed), "--no-progress"]
    if epochs is not None:
        flags += ["--epochs", str(epochs)]
    if quick:
        flags += ["--num_images", "256", "--num_eval_images", "128"]
        if epochs is None:
            flags += ["--epochs", "2"]
    command = "dinolab train dino " + " ".join(flags)
    expected = epochs or (2 if quick else 30)
    log = out_dir / "log_epochs.jsonl"
    done = (log.is_file() and len(log.read_text().splitlines()) == expected
            and _run_recipe(out_dir) == _default_recipe())
    cpu: float | None = None
    if done and (out_dir / "checkpoint.pth").is_file():
        print(f"measuring the finished run of: {command}", flush=True)
    else:
        print(f"running: {command}", flush=True)
        shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run (no --resume)
        # The same thread count as this process, where the supervised baseline runs.
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE",
               "OMP_NUM_THREADS": str(torch.get_num_threads())}
        cpu = _child_cpu_s()
        subprocess.run([sys.executable, "-m", "dinolab", "train", "dino", *flags], cwd=ROOT,
                       env=env, check=True)
        cpu = _child_cpu_s() - cpu
    epochs_log = [json.loads(x) for x in log.read_text().splitlines()]
    curve_cpu, total = [], 0.0
    for e in epochs_log:
        total += e["epoch_cpu_time_s"]
        curve_cpu.append(total)
    return {
        "command": command,
        "epochs": epochs,
        "shapes_style": _run_style(out_dir),
        "recipe": _run_recipe(out_dir),
        "train_cpu_s": total,
        "total_cpu_s": cpu,
        "cpu_curve_s": curve_cpu,
        "knn_curve": [e.get("knn_top1") for e in epochs_log],
        "teacher_entropy_curve": [e["train_teacher_entropy"] for e in epochs_log],
        "log_out_dim": epochs_log[-1]["train_log_out_dim"],
        **measure_teacher(out_dir / "checkpoint.pth"),
    }


def train_supervised(seed: int, cpu_budget_s: float, quick: bool) -> dict[str, Any]:
    """The dino recipe's backbone trained with labels for ``cpu_budget_s`` of process CPU time.

    Same data seed, augmentation (the first global crop of ``dinolab train dino``'s multi-crop;
    the second global crop is drawn too and discarded, a small cost charged to this side),
    backbone, optimiser (AdamW, the recipe's lr and weight decay, one warm-up epoch, then a
    cosine decay over the fraction of the CPU budget used, so it ends at the budget whatever
    the speed), batch and thread count (this process's, which the DINO run is given too); a
    linear classifier on the CLS feature, cross-entropy. Measured like the DINO teacher.
    """
    from dinolab.eval import attention_jaccard, centre_prior_jaccard, cls_attention, map_object_mass
    from dinolab.train.engine import fix_random_seeds, get_params_groups
    from dinolab.train.recipes.common import build_ssl_data, knn_evaluate
    from dinolab.train.recipes.dino import DINOConfig, build_backbone_from

    cfg = DINOConfig(seed=seed, data_seed=seed, local_crops_number=0, progress=False,
                     **({"num_images": 256, "num_eval_images": 128} if quick else {}))
    data = build_ssl_data(cfg)
    fix_random_seeds(seed)
    backbone = build_backbone_from(cfg)
    classifier = nn.Linear(backbone.embed_dim, data.num_classes)
    model = nn.Sequential(backbone, classifier)
    lr = cfg.lr * cfg.batch_size_per_gpu / 256
    optimizer = torch.optim.AdamW(get_params_groups(model), lr=lr,
                                  weight_decay=cfg.weight_decay)
    loader = torch.utils.data.DataLoader(
        data.train_set, batch_size=cfg.batch_size_per_gpu, shuffle=True, drop_last=True,
        collate_fn=data.collate_fn, generator=torch.Generator().manual_seed(seed),
    )
    per_epoch = len(loader)
    step, epoch = 0, 0
    start = time.process_time()
    while time.process_time() - start < cpu_budget_s:
        data.train_set.set_epoch(epoch)
        for views, labels in loader:
            used = time.process_time() - start
            if used >= cpu_budget_s:
                break
            warm = min(1.0, (step + 1) / per_epoch)
            progress = used / cpu_budget_s
            for group in optimizer.param_groups:
                group["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * progress))
            loss = F.cross_entropy(model(views[0]), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            step += 1
        epoch += 1
    train_cpu = time.process_time() - start
    backbone.eval()
    knn = knn_evaluate(backbone, data.knn_train, data.knn_test, data.num_classes, k=cfg.knn_k)
    masks = data.knn_test.dataset.masks
    n = min(500, len(masks))
    images = torch.stack([data.knn_test[i][0] for i in range(n)])
    target = torch.from_numpy(masks[:n])
    result = attention_jaccard(backbone, images, target)
    object_mass = map_object_mass(cls_attention(backbone, images).mean(1), target,
                                  backbone.patch_size)
    return {
        "budget_s": cpu_budget_s,
        "threads": torch.get_num_threads(),
        "steps": step,
        "train_cpu_s": train_cpu,
        "knn_top1": knn,
        "jaccard_mean_map": float(result.mean_map),
        "jaccard_per_head": [float(v) for v in result.per_head],
        "jaccard_best_head": float(max(result.per_head)),
        "centre_prior_jaccard": float(centre_prior_jaccard(target, backbone.patch_size).mean()),
        "object_mass": float(object_mass.mean()),
    }


# Bumped when ``measure_attention_shares`` changes what it reports (2: median area ratio).
_SHARES_VERSION = 2


def _attention_shares(out_dir: Path) -> dict[str, Any]:
    """Threshold-free attention figures of the run's teacher (``measure_attention_shares``)."""
    from dinolab.train.course_teacher import measure_attention_shares

    return {**measure_attention_shares(out_dir / "checkpoint.pth"), "version": _SHARES_VERSION}


def _saved(path: Path, key: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The JSON at ``path`` when it exists and its entries agree with ``key``, else None."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if all(saved.get(k) == v for k, v in (key or {}).items()):
            return saved
    return None


def _cached(path: Path, make: Any, *args: Any, key: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """``make(*args)``, saved as JSON at ``path``; read back when the file exists and its
    entries agree with ``key`` (else made again)."""
    saved = _saved(path, key)
    if saved is not None:
        return saved
    result = make(*args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _stat(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{fmt.format(values[0])} (one seed)"
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.stdev(values))}"


_BUDGET_NAMES = {"full": "default 30 epochs", "10min": "about 10 CPU-minutes"}


def _plot(results: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    # The longest budget that has runs (the default 30 epochs, else about 10 CPU-minutes).
    budget = next((b for b in ("full", "10min") if results.get(b)), "full")
    full = results.get(budget, {})
    for seed, r in sorted(full.items()):
        dino = r["dino"]
        mins = [c / 60 for c in dino["cpu_curve_s"]]
        knn = [(m, v) for m, v in zip(mins, dino["knn_curve"], strict=True) if v is not None]
        (line,) = left.plot(*zip(*knn, strict=True), marker="o", ms=2, label=f"DINO, seed {seed}")
        left.axhline(dino["pixels_knn_top1"], color=line.get_color(), ls="--", lw=1)
        right.plot(mins, dino["teacher_entropy_curve"], color=line.get_color(),
                   label=f"seed {seed}")
        sup = r["supervised"]
        left.plot([sup["train_cpu_s"] / 60], [sup["knn_top1"]], marker="*", ms=10,
                  color=line.get_color(), ls="none")
    left.plot([], [], color="grey", ls="--", lw=1, label="raw pixels (same seed)")
    left.plot([], [], color="grey", marker="*", ms=10, ls="none",
              label="same backbone, labels, same CPU time")
    left.axhline(100 / 6, color="lightgrey", lw=1, label="chance")
    left.set(xlabel="training CPU time (minutes)", ylabel="k-NN top-1 on held-out images (%)",
             title=f"DINO teacher on held-out data seeds ({_BUDGET_NAMES[budget]})",
             ylim=(0, 100))
    left.legend(loc="lower right", fontsize=8)
    if full:
        log_k = next(iter(full.values()))["dino"]["log_out_dim"]
        right.axhline(log_k, color="black", ls=":", label=f"uniform: ln K = {log_k:.2f}")
        right.set_ylim(0, log_k * 1.1)
    right.set(xlabel="training CPU time (minutes)", ylabel="teacher entropy (nats)",
              title="Teacher targets leave uniform")
    right.legend(loc="upper right", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def experiment_dino_showcase(
    quick: bool, seeds: list[int], report_only: bool = False,
    budgets: tuple[str, ...] = tuple(BUDGET_EPOCHS),
) -> str:
    """Run what is missing (or, with ``report_only``, nothing) and report every finished run.

    Only runs with today's default settings (:func:`_default_recipe`) are reused or reported;
    ``budgets``
    picks among :data:`BUDGET_EPOCHS` (all by default).
    """
    unknown = sorted(set(budgets) - set(BUDGET_EPOCHS))
    if unknown:
        raise ValueError(f"budgets {unknown} are not among {tuple(BUDGET_EPOCHS)}")
    root = RUNS / "quick" if quick else RUNS
    style = _default_style()
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for budget, epochs in BUDGET_EPOCHS.items():
        if (quick and budget != "full") or budget not in budgets:
            continue
        for seed in seeds:
            out_dir = root / f"dino_{budget}_seed{seed}"
            key = {"epochs": epochs, "shapes_style": style, "recipe": _default_recipe()}
            if report_only and (_saved(out_dir / "figures.json", key) is None
                                or not (out_dir / "supervised.json").is_file()):
                continue
            dino = _cached(out_dir / "figures.json", run_dino, seed, epochs, out_dir, quick,
                           key=key)
            sup = _cached(out_dir / "supervised.json", train_supervised, seed,
                          dino["train_cpu_s"], quick,
                          key={"budget_s": dino["train_cpu_s"],
                               "threads": torch.get_num_threads()})
            shares_key = {"version": _SHARES_VERSION}
            shares = (_saved(out_dir / "attention_shares.json", shares_key)
                      if report_only and not (out_dir / "checkpoint.pth").is_file()
                      else _cached(out_dir / "attention_shares.json", _attention_shares, out_dir,
                                   key=shares_key))
            results.setdefault(budget, {})[seed] = {"dino": dino, "supervised": sup,
                                                    "shares": shares}
    figure = OUT / ("dino_showcase_quick.png" if quick else "dino_showcase.png")
    _plot(results, figure)
    lines = [
        "## DINO on the dark shapes: held-out data seeds, against labels for the same CPU time",
        "",
        f"`dinolab train dino` with its defaults (the course teacher's recipe on `{style}` "
        "shapes, tuned on data seed 100 only) on data seeds that took no part in choosing it; "
        "each seed's own test split (images no step saw) for every figure. 'Labels' is the "
        "same backbone trained with cross-entropy on the same augmented crops for the same "
        "training CPU time (`train_supervised` in experiments/dino_showcase.py). Mean ± sd over "
        "the seeds listed.",
        "",
    ]
    for budget, by_seed in results.items():
        if not by_seed:
            continue
        d = [r["dino"] for r in by_seed.values()]
        s = [r["supervised"] for r in by_seed.values()]
        cpu = statistics.fmean(x["train_cpu_s"] for x in d) / 60
        lines += [
            f"### Budget: {'the default 30 epochs' if budget == 'full' else 'about 10 CPU-minutes'}"
            f" ({cpu:.1f} training CPU-minutes on average; seeds {sorted(by_seed)})",
            "",
            "| features | k-NN top-1 (%) | attention Jaccard, heads averaged | best head |",
            "|---|---:|---:|---:|",
            f"| DINO teacher | {_stat([x['knn_top1'] for x in d])} | "
            f"{_stat([x['jaccard_mean_map'] for x in d], '{:.3f}')} | "
            f"{_stat([x['jaccard_best_head'] for x in d], '{:.3f}')} |",
            f"| same backbone, labels, same CPU time | {_stat([x['knn_top1'] for x in s])} | "
            f"{_stat([x['jaccard_mean_map'] for x in s], '{:.3f}')} | "
            f"{_stat([x['jaccard_best_head'] for x in s], '{:.3f}')} |",
            f"| random initialisation | {_stat([x['random_knn_top1'] for x in d])} | "
            f"{_stat([x['random_jaccard_mean_map'] for x in d], '{:.3f}')} | "
            f"{_stat([x['random_jaccard_best_head'] for x in d], '{:.3f}')} |",
            f"| raw pixels / centre prior (no model) | {_stat([x['pixels_knn_top1'] for x in d])}"
            f" | {_stat([x['centre_prior_jaccard'] for x in d], '{:.3f}')} | - |",
            "",
            "Commands: " + "; ".join(f"`{x['command']}`" for x in d),
            "",
        ]
        m = [r["shares"] for r in by_seed.values()]
        if not all(m):  # report_only, and a run measured before the shares existed
            continue
        lines += [
            "Where the head-averaged attention goes, with no threshold "
            "(`dinolab.eval.map_object_mass`: the share of the map's mass on the object's "
            "pixels; same images):",
            "",
            "| attention | share of its mass on the object | 60%-mass set's area / object's "
            "(median image) |",
            "|---|---:|---:|",
            f"| DINO teacher | {_stat([x['object_mass'] for x in m], '{:.2f}')} | "
            f"{_stat([x['kept_area_over_object'] for x in m], '{:.2f}')} |",
            *([f"| same backbone, labels, same CPU time | "
               f"{_stat([x['object_mass'] for x in s], '{:.2f}')} | - |"]
              if all("object_mass" in x for x in s) else []),
            f"| random initialisation | {_stat([x['random_object_mass'] for x in m], '{:.2f}')}"
            " | - |",
            f"| centre prior (no model) | "
            f"{_stat([x['centre_prior_object_mass'] for x in m], '{:.2f}')} | - |",
            f"| uniform (the object's share of the image) | "
            f"{_stat([x['uniform_object_mass'] for x in m], '{:.2f}')} | - |",
            "",
        ]
    if any(all(r["shares"] for r in b.values()) for b in results.values() if b):
        labels_measured = all("object_mass" in r["supervised"] for b in results.values()
                              for r in b.values())
        lines += [
            "The Jaccard thresholds each map to keep 60% of its mass (the DINO paper's metric); "
            "a map sharper than the object keeps fewer pixels than the object has (area ratio "
            "below 1) and scores lower even with more of its mass on the object. The share "
            "column has no threshold."
            + ("" if labels_measured
               else " Label runs measured before the share existed kept no weights, so their "
               "share is shown only where every seed of a budget has it."),
            "",
        ]
    lines += [f"![DINO on held-out seeds](experiments/{figure.name})", ""]
    return "\n".join(lines)
