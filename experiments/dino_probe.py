"""Research probe: what makes DINO leave the stall on synthetic shapes (CPU, 2 cores).

This is the throwaway prototype behind ``experiments/dino_research.md``: a self-contained
DINO training run on synthetic shapes in which each variant tried in that log is one
command-line flag. It has its own synthetic generator (six Shapes silhouettes anywhere in the
image, any rotation; backgrounds by ``--bg``), its own batched crops and colour augmentation
(``--cmode``), dinolab's ``VisionTransformer`` and ``DINOHead``, a plain DINO loss with
centering (or Sinkhorn-Knopp, ``--sk``), optional KoLeo (``--koleo``), AdamW with a cosine
schedule and an EMA teacher with cosine momentum. Every ``--eval_every`` steps it logs, as
JSON lines, the teacher's k-NN accuracy, the attention Jaccard with the object masks and the
teacher's entropy; ``--sup`` trains the backbone with labels instead, as a reference.

It is not part of the library: what it found went into ``dinolab.data.shapes`` and
``dinolab train dino``. The runs of the research log, from ``experiments/``, e.g.::

    python dino_probe.py --name r4_mono_koleo --bg mono --cmode none --gray 0 --koleo 0.1 \\
        --tt 0.03 --steps 3000 --budget 600 --eval_every 150

The log goes to ``<--out>/<--name>.jsonl`` (``--out`` defaults to ``runs/dino_probe``,
relative to the working directory) and the final teacher to ``<--out>/<--name>_teacher.pt``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dinolab.data.shapes import SHAPE_CLASSES, _silhouette
from dinolab.eval import knn_accuracy
from dinolab.models import DINOHead
from dinolab.models.vit import VisionTransformer

# ----------------------------------------------------------------------------- data


def gen(n, size, seed, split, clutter=0.0, bg="gradient", min_r=0.18, max_r=0.32, ss=2,
        ncls=6, centred=False):
    """Draw ``n`` shape images of ``size`` px, supersampled ``ss`` times.

    Returns ``imgs [n,size,size,3]`` uint8, ``labels [n]`` int64 (balanced over ``ncls``
    classes, shuffled) and ``masks [n,size,size]`` bool (object coverage >= 0.5).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, split, 77]))
    labels = rng.permutation(np.arange(n) % ncls)
    f = np.float32
    m = size * ss
    c = ((np.arange(m) + 0.5) / m).astype(f)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    imgs = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), bool)
    for i0 in range(0, n, 256):
        lab = labels[i0:i0 + 256]
        k = len(lab)
        r = rng.uniform(min_r, max_r, k).astype(f)
        if centred:
            cx = np.full(k, 0.5, f)
            cy = np.full(k, 0.5, f)
        else:
            cx = rng.uniform(r + 0.02, 0.98 - r).astype(f)
            cy = rng.uniform(r + 0.02, 0.98 - r).astype(f)
        th = rng.uniform(0, 2 * np.pi, k).astype(f)
        dx = xx[None] - cx[:, None, None]
        dy = yy[None] - cy[:, None, None]
        ct, st = np.cos(th)[:, None, None], np.sin(th)[:, None, None]
        u = (dx * ct + dy * st) / r[:, None, None]
        v = (dy * ct - dx * st) / r[:, None, None]
        inside = np.zeros(u.shape, bool)
        for ci, name in enumerate(SHAPE_CLASSES[:ncls]):
            idx = np.flatnonzero(lab == ci)
            if idx.size:
                inside[idx] = _silhouette(name, u[idx], v[idx])
        alpha = inside.reshape(k, size, ss, size, ss).mean((2, 4)).astype(f)[..., None]
        # background
        c1 = rng.uniform(0, 1, (k, 3)).astype(f)
        if bg == "dark":
            lv = rng.uniform(0, 0.35, (k, 1, 1, 3)).astype(f)
            back = np.broadcast_to(lv, (k, size, size, 3)).copy()
        elif bg == "mono":
            lv = rng.uniform(0, 0.35, (k, 1)).astype(f)
            back = np.broadcast_to(lv[:, None, None], (k, size, size, 3)).copy()
        elif bg == "gradient":
            c2 = rng.uniform(0, 1, (k, 3)).astype(f)
            ang = rng.uniform(0, 2 * np.pi, k).astype(f)
            g = ((np.cos(ang)[:, None, None] * (xx[None, ::ss, ::ss] - 0.5)
                  + np.sin(ang)[:, None, None] * (yy[None, ::ss, ::ss] - 0.5)) + 0.5)
            g = np.clip(g, 0, 1)[..., None]
            back = c1[:, None, None] * (1 - g) + c2[:, None, None] * g
        else:
            back = np.broadcast_to(c1[:, None, None], (k, size, size, 3)).copy()
        # object colour far from the mean background
        col = rng.uniform(0, 1, (k, 3)).astype(f)
        mb = back.reshape(k, -1, 3).mean(1)
        if bg == "dark":
            col = rng.uniform(0.55, 1.0, (k, 3)).astype(f)
        if bg == "mono":
            col = np.repeat(rng.uniform(0.65, 1.0, (k, 1)).astype(f), 3, 1)
        for _ in range(0 if bg in ("mono", "dark") else 20):
            bad = np.linalg.norm(col - mb, axis=1) < 0.5
            if not bad.any():
                break
            col[bad] = rng.uniform(0, 1, (int(bad.sum()), 3))
        img = back + (col[:, None, None] - back) * alpha
        if clutter > 0:
            # thin strokes of random colour, drawn over the background only
            xs, ys = xx[::ss, ::ss], yy[::ss, ::ss]
            nstroke = rng.poisson(clutter * 3, k)
            for j in range(k):
                for _ in range(nstroke[j]):
                    p0 = rng.uniform(0, 1, 2)
                    ang = rng.uniform(0, np.pi)
                    L = rng.uniform(0.2, 0.6)
                    d = np.abs((xs - p0[0]) * np.sin(ang) - (ys - p0[1]) * np.cos(ang))
                    t = (xs - p0[0]) * np.cos(ang) + (ys - p0[1]) * np.sin(ang)
                    line = ((d < 0.025) & (np.abs(t) < L / 2) & (alpha[j, ..., 0] < 0.5))[..., None]
                    img[j] = np.where(line, rng.uniform(0, 1, 3).astype(f), img[j])
        noise_std = rng.uniform(0.01, 0.05, (k, 1, 1, 1)).astype(f)
        img += noise_std * rng.standard_normal(img.shape).astype(f)
        imgs[i0:i0 + k] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
        masks[i0:i0 + k] = alpha[..., 0] >= 0.5
    return imgs, labels, masks


# ----------------------------------------------------------------------------- aug


def crops(x, n_out, size, scale, rotate=True, g=None):
    """Random resized crops (+ rotation, flip), one per image: ``x [B,3,S,S]`` float ->
    ``[B,3,size,size]``. ``scale`` is the (min, max) area fraction; ``n_out`` is unused."""
    B = x.shape[0]
    s = torch.empty(B).uniform_(*scale, generator=g)
    logr = torch.empty(B).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)
    r = logr.exp()
    w = (s * r).sqrt().clamp(max=1.0)
    h = (s / r).sqrt().clamp(max=1.0)
    cx = (torch.rand(B, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(B, generator=g) * 2 - 1) * (1 - h)
    th = torch.rand(B, generator=g) * 2 * math.pi if rotate else torch.zeros(B)
    flip = torch.where(torch.rand(B, generator=g) < 0.5, -1.0, 1.0)
    ct, st = th.cos(), th.sin()
    A = torch.stack([torch.stack([w * ct * flip, -h * st, cx], 1),
                     torch.stack([w * st * flip, h * ct, cy], 1)], 1)
    grid = F.affine_grid(A, (B, 3, size, size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour(x, mode, strength, gray_p, g=None):
    """Colour augmentation and normalisation: ``x [B,3,H,W]`` in [0, 1] -> ``[B,3,H,W]``.

    ``mode``: "perm" (random channel permutation per image), "perm_inv" (and per-channel
    inversion), "gray_pol" (grey with random polarity) or anything else (none); then
    brightness/contrast/saturation jitter of ``strength`` and greyscale with probability
    ``gray_p``. The result is normalised as ``(x - 0.5) / 0.25``.
    """
    B = x.shape[0]
    if mode in ("perm", "perm_inv"):
        perm = torch.stack([torch.randperm(3, generator=g) for _ in range(B)])
        x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
        if mode == "perm_inv":
            inv = (torch.rand(B, 3, 1, 1, generator=g) < 0.5).float()
            x = inv * (1 - x) + (1 - inv) * x
    if mode == "gray_pol":
        x = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
        inv = (torch.rand(B, 1, 1, 1, generator=g) < 0.5).float()
        x = inv * (1 - x) + (1 - inv) * x
    if strength > 0:
        b = 1 + (torch.rand(B, 1, 1, 1, generator=g) * 2 - 1) * strength
        x = x * b
        cf = 1 + (torch.rand(B, 1, 1, 1, generator=g) * 2 - 1) * strength
        m = x.mean((1, 2, 3), keepdim=True)
        x = (x - m) * cf + m
        sf = 1 + (torch.rand(B, 1, 1, 1, generator=g) * 2 - 1) * strength
        gr = x.mean(1, keepdim=True)
        x = (x - gr) * sf + gr
        x = x.clamp(0, 1)
    if gray_p > 0:
        gm = (torch.rand(B, 1, 1, 1, generator=g) < gray_p).float()
        x = gm * x.mean(1, keepdim=True) + (1 - gm) * x
    return (x - 0.5) / 0.25


# ----------------------------------------------------------------------------- model


def build(args):
    """``ModuleDict(backbone=ViT: [B,3,S,S] -> [B,D], head=DINOHead: [B,D] -> [B,K])``."""
    vit = VisionTransformer(img_size=args.size, patch_size=args.patch, embed_dim=args.dim,
                            depth=args.depth, num_heads=args.heads, mlp_ratio=args.mlp_ratio,
                            drop_path_rate=0.0)
    head = DINOHead(args.dim, args.K, use_bn=args.bn_head, norm_last_layer=args.norm_last,
                    nlayers=3, hidden_dim=args.hidden, bottleneck_dim=args.bottleneck)
    return nn.ModuleDict({"backbone": vit, "head": head})


def fwd(model, xs):
    """Head outputs of a list of crops ``xs[i] [B_i,3,s_i,s_i]`` -> ``[sum B_i, K]``.

    Consecutive crops of the same size go through the backbone as one batch.
    """
    outs = []
    i = 0
    while i < len(xs):
        j = i
        while j < len(xs) and xs[j].shape[-1] == xs[i].shape[-1]:
            j += 1
        f = model["backbone"](torch.cat(xs[i:j]))
        outs.append(f)
        i = j
    f = torch.cat(outs)
    return model["head"](f)


def sinkhorn(logits, iters=3):
    """Sinkhorn-Knopp targets: ``logits [N,K]`` -> ``[N,K]``, each row summing to 1."""
    Q = torch.exp(logits - logits.max()).t()
    Bn = Q.shape[1]
    K = Q.shape[0]
    Q /= Q.sum()
    for _ in range(iters):
        Q /= Q.sum(dim=1, keepdim=True)
        Q /= K
        Q /= Q.sum(dim=0, keepdim=True)
        Q /= Bn
    Q *= Bn
    return Q.t()


@torch.no_grad()
def features(backbone, x, bs=500):
    """Backbone features in eval mode: ``x [N,3,S,S]`` in [0, 255] -> ``[N,D]``."""
    backbone.eval()
    out = torch.cat([backbone((x[i:i + bs] / 255 - 0.5) / 0.25) for i in range(0, len(x), bs)])
    return out


@torch.no_grad()
def attn_jaccard(backbone, x, masks, patch, mass=0.6):
    """Jaccard of the last block's CLS attention (kept to ``mass``) with the object masks.

    ``x [B,3,S,S]`` in [0, 255], ``masks [B,S,S]`` bool. Returns the mean Jaccard of the
    head-averaged attention and a list of the mean Jaccard of each head.
    """
    backbone.eval()
    a = backbone.get_last_selfattention((x / 255 - 0.5) / 0.25)  # [B,h,T+1,T+1]
    cls = a[:, :, 0, 1:]
    B, H, T = cls.shape
    s = int(math.isqrt(T))

    def thr(m):
        """``m [B,T]`` attention -> ``[B,s,s]`` bool, the top patches holding ``mass``."""
        v, idx = m.sort(dim=-1, descending=True)
        cum = v.cumsum(-1) / v.sum(-1, keepdim=True)
        keep_sorted = (cum - v / v.sum(-1, keepdim=True)) < mass
        keep = torch.zeros_like(keep_sorted)
        keep.scatter_(-1, idx, keep_sorted)
        return keep.view(-1, s, s)

    def jac(k):
        """``k [B,s,s]`` bool patches -> mean Jaccard with ``masks``."""
        up = k.repeat_interleave(patch, -1).repeat_interleave(patch, -2)
        inter = (up & masks).sum((1, 2)).float()
        uni = (up | masks).sum((1, 2)).float()
        return (inter / uni.clamp(min=1)).mean().item()

    mean_j = jac(thr(cls.mean(1)))
    head_j = [jac(thr(cls[:, h])) for h in range(H)]
    return mean_j, head_j


def centre_prior_jaccard(masks, s, patch, mass=0.6):
    """Mean Jaccard of a centred Gaussian (sigma 0.25 of the side, kept to ``mass``) on an
    ``s x s`` patch grid with ``masks [B,s*patch,s*patch]`` bool."""
    c = (torch.arange(s) + 0.5) / s - 0.5
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    m = torch.exp(-(xx**2 + yy**2) / (2 * 0.25**2)).flatten()
    v, idx = m.sort(descending=True)
    cum = v.cumsum(0) / v.sum()
    keep_s = (cum - v / v.sum()) < mass
    keep = torch.zeros_like(keep_s)
    keep[idx] = keep_s
    up = keep.view(s, s).repeat_interleave(patch, -1).repeat_interleave(patch, -2)[None]
    inter = (up & masks).sum((1, 2)).float()
    uni = (up | masks).sum((1, 2)).float()
    return (inter / uni).mean().item()


# ----------------------------------------------------------------------------- main


def parse_args():
    """The probe's flags (their order is the order of the logged ``args``)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    a = p.add_argument
    # run and data
    a("--name", default="run")
    a("--seed", type=int, default=0)
    a("--data_seed", type=int, default=100)
    a("--n", type=int, default=5000)
    a("--n_test", type=int, default=1000)
    a("--size", type=int, default=32)
    a("--clutter", type=float, default=0.0)
    a("--bg", default="gradient")
    a("--centred", action="store_true")
    # model
    a("--patch", type=int, default=4)
    a("--dim", type=int, default=96)
    a("--depth", type=int, default=4)
    a("--heads", type=int, default=3)
    a("--mlp_ratio", type=float, default=2.0)
    a("--K", type=int, default=256)
    a("--hidden", type=int, default=256)
    a("--bottleneck", type=int, default=64)
    a("--bn_head", action="store_true")
    a("--norm_last", type=int, default=1)
    # optimisation
    a("--batch", type=int, default=64)
    a("--lr", type=float, default=1e-3)
    a("--wd", type=float, default=0.04)
    a("--wd_end", type=float, default=0.04)
    a("--warmup", type=int, default=100)
    a("--steps", type=int, default=2000)
    # DINO loss
    a("--mom", type=float, default=0.99)
    a("--tt", type=float, default=0.04)
    a("--tt_warm", type=float, default=None)
    a("--tt_warm_steps", type=int, default=0)
    a("--st", type=float, default=0.1)
    a("--center_m", type=float, default=0.9)
    a("--sk", action="store_true")
    # crops and colour
    a("--nlocal", type=int, default=4)
    a("--gscale", type=float, nargs=2, default=(0.35, 1.0))
    a("--lscale", type=float, nargs=2, default=(0.1, 0.35))
    a("--lsize", type=int, default=16)
    a("--rotate", type=int, default=1)
    a("--cmode", default="perm_inv")
    a("--cstr", type=float, default=0.4)
    a("--gray", type=float, default=0.2)
    # misc
    a("--clip", type=float, default=3.0)
    a("--freeze_last", type=int, default=0)
    a("--eval_every", type=int, default=100)
    a("--budget", type=float, default=600.0)
    a("--threads", type=int, default=1)
    a("--sup", action="store_true")
    a("--out", default="runs/dino_probe")
    a("--koleo", type=float, default=0.0)
    return p.parse_args()


def grey_pixels(x):
    """``[N,3,H,W]`` -> ``[N,H*W]``: the channel mean, flattened."""
    return x.mean(1).flatten(1)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    logf = open(f"{args.out}/{args.name}.jsonl", "w")

    def log(d):
        d["name"] = args.name
        logf.write(json.dumps(d) + "\n")
        logf.flush()
        print(json.dumps(d), flush=True)

    def view(x, size, scale):
        """One augmented crop of each image of ``x [B,3,S,S]`` -> ``[B,3,size,size]``."""
        v = crops(x, 1, size, scale, bool(args.rotate), g)
        return colour(v, args.cmode, args.cstr, args.gray, g)

    # data and baselines
    tr, ytr, _ = gen(args.n, args.size, args.data_seed, 0, args.clutter, args.bg,
                     centred=args.centred)
    te, yte, mte = gen(args.n_test, args.size, args.data_seed, 1, args.clutter, args.bg,
                       centred=args.centred)
    Xtr = torch.from_numpy(tr).permute(0, 3, 1, 2).float()
    Xte = torch.from_numpy(te).permute(0, 3, 1, 2).float()
    ytr_t, yte_t = torch.from_numpy(ytr), torch.from_numpy(yte)
    mte_t = torch.from_numpy(mte)
    bank = Xtr[:2000]
    ybank = ytr_t[:2000]
    px = knn_accuracy(bank.flatten(1), ybank, Xte.flatten(1), yte_t, 6)
    pxg = knn_accuracy(grey_pixels(bank), ybank, grey_pixels(Xte), yte_t, 6)
    s = args.size // args.patch
    cp = centre_prior_jaccard(mte_t[:500], s, args.patch)
    log({"pixels": px, "pixels_gray": pxg, "centre_prior": cp, "args": vars(args)})

    # student, teacher, optimiser
    student = build(args)
    teacher = build(args)
    teacher.load_state_dict(student.state_dict())
    for q in teacher.parameters():
        q.requires_grad_(False)
    if args.sup:
        clf = nn.Linear(args.dim, 6)
        student["clf"] = clf
    # weight decay on every matrix, including the last layer's weight_v (as official DINO)
    params_reg = [q for n_, q in student.named_parameters() if q.ndim > 1]
    params_noreg = [q for n_, q in student.named_parameters() if q.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": params_reg}, {"params": params_noreg, "weight_decay": 0.0}],
        lr=args.lr, weight_decay=args.wd,
    )
    center = torch.zeros(1, args.K)
    cpu0 = time.process_time()
    eval_cpu = 0.0

    def evaluate(step, extra):
        nonlocal eval_cpu
        t0 = time.process_time()
        bb = teacher["backbone"] if not args.sup else student["backbone"]
        ftr = features(bb, bank)
        fte = features(bb, Xte)
        acc = knn_accuracy(ftr, ybank, fte, yte_t, 6)
        mj, hj = attn_jaccard(bb, Xte[:500], mte_t[:500], args.patch)
        eval_cpu += time.process_time() - t0
        log({"step": step, "cpu": time.process_time() - cpu0 - eval_cpu, "knn": acc,
             "jac": mj, "jac_heads": hj, **extra})
        student.train()
        teacher.train()

    evaluate(0, {})
    step = 0
    N = len(Xtr)
    perm = torch.randperm(N, generator=g)
    pi = 0
    stats = {}
    while step < args.steps:
        if time.process_time() - cpu0 - eval_cpu > args.budget:
            break
        if pi + args.batch > N:
            perm = torch.randperm(N, generator=g)
            pi = 0
        idx = perm[pi:pi + args.batch]
        pi += args.batch
        x = Xtr[idx] / 255.0
        frac = step / args.steps
        warm = min(1.0, (step + 1) / args.warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * frac)) if step >= args.warmup else 1.0
        lr = args.lr * warm * cosine
        wd = args.wd_end + (args.wd - args.wd_end) * 0.5 * (1 + math.cos(math.pi * frac))
        for gi, grp in enumerate(opt.param_groups):
            grp["lr"] = lr
            if gi == 0:
                grp["weight_decay"] = wd

        if args.sup:  # supervised reference: cross-entropy on one global crop
            v = view(x, args.size, args.gscale)
            logits = student["clf"](student["backbone"](v))
            loss = F.cross_entropy(logits, ytr_t[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), args.clip)
            opt.step()
            step += 1
            if step % args.eval_every == 0:
                evaluate(step, {"loss": loss.item()})
            continue

        gl = [view(x, args.size, args.gscale) for _ in range(2)]
        lc = [view(x, args.lsize, args.lscale) for _ in range(args.nlocal)]
        B = x.shape[0]
        with torch.no_grad():
            t_out = fwd(teacher, gl)  # [2B,K]
            if args.tt_warm is not None and step < args.tt_warm_steps:
                tt = args.tt_warm + (args.tt - args.tt_warm) * step / args.tt_warm_steps
            else:
                tt = args.tt
            if args.sk:
                t_p = sinkhorn(t_out / tt)
            else:
                t_p = F.softmax((t_out - center) / tt, -1)
            center = center * args.center_m + t_out.mean(0, keepdim=True) * (1 - args.center_m)

        # student forward, keeping the backbone's features ([B_i,D] per crop size) for KoLeo
        feats = []

        def _keep_output(mod, inp, out, feats=feats):
            feats.append(out)

        hk = student["backbone"].register_forward_hook(_keep_output)
        s_out = fwd(student, gl + lc) / args.st
        hk.remove()
        s_lp = F.log_softmax(s_out, -1).chunk(2 + args.nlocal)
        t_ps = t_p.chunk(2)
        loss = 0
        nterms = 0
        for iq, q in enumerate(t_ps):
            for v in range(len(s_lp)):
                if v == iq:
                    continue
                loss = loss + (-q * s_lp[v]).sum(-1).mean()
                nterms += 1
        loss = loss / nterms
        if args.koleo > 0:  # on the first global crop's backbone features
            z = F.normalize(feats[0][:B], dim=-1)
            with torch.no_grad():
                d = z @ z.t()
                d.fill_diagonal_(-2)
                nn_i = d.argmax(1)
            dist = (z - z[nn_i]).norm(dim=-1)
            loss = loss - args.koleo * torch.log(dist + 1e-8).mean()

        opt.zero_grad()
        loss.backward()
        if args.clip > 0:  # per-parameter gradient norm clipping, as official DINO
            for q in student.parameters():
                if q.grad is not None:
                    nrm = q.grad.norm()
                    if nrm > args.clip:
                        q.grad.mul_(args.clip / (nrm + 1e-6))
        if step < args.freeze_last:
            for n_, q in student.named_parameters():
                if "last_layer" in n_:
                    q.grad = None
        opt.step()

        # EMA teacher, momentum cosine from --mom to 1
        m = 1 - (1 - args.mom) * (math.cos(math.pi * frac) + 1) / 2
        with torch.no_grad():
            for ps, pt in zip(student.parameters(), teacher.parameters(), strict=True):
                pt.lerp_(ps, 1 - m)
            for bs, bt in zip(student.buffers(), teacher.buffers(), strict=True):
                bt.copy_(bs)
        step += 1
        if step % 20 == 0 or step % args.eval_every == 0:
            with torch.no_grad():
                ent_img = -(t_p * t_p.clamp_min(1e-12).log()).sum(-1).mean().item()
                mp = t_p.mean(0)
                ent_batch = -(mp * mp.clamp_min(1e-12).log()).sum().item()
            stats = {"loss": loss.item(), "ent_img": ent_img, "ent_batch": ent_batch, "lr": lr}
        if step % args.eval_every == 0:
            evaluate(step, stats)
    evaluate(step, stats)
    if not args.sup:
        torch.save(teacher.state_dict(), f"{args.out}/{args.name}_teacher.pt")


if __name__ == "__main__":
    main()
