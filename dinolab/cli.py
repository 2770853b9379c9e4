"""The ``dinolab`` command line: train the three recipes, evaluate checkpoints.

::

    dinolab train dino     [flags]   # self-distillation (official DINO's flag names)
    dinolab train kd       [flags]   # TeacherNet -> StudentNet knowledge distillation
    dinolab train distill  [flags]   # small ViT from a frozen teacher, five losses
    dinolab eval knn       [flags]   # weighted k-NN on frozen features (--dump_features DIR)
    dinolab eval linear    [flags]   # linear probe on frozen features
    dinolab export         [flags]   # a checkpoint's backbone as .pth and .safetensors
    dinolab visualize attention [flags]   # official DINO's per-head attention maps, PNGs
    dinolab visualize pca  [flags]   # DINOv2's PCA colours of the patch features, PNGs
    python -m dinolab ...            # the same
    torchrun --nproc_per_node=2 -m dinolab train dino ...   # several processes / GPUs

Every flag is a field of the command's config dataclass (:class:`~dinolab.train.recipes.
DINOConfig`, :class:`~dinolab.tools.export.ExportConfig`, ...) with the same name, default and
help text, so the library and the command line cannot drift apart. ``dinolab train dino
--help`` lists them. Two flags of ``train`` are the command line's own: ``--config FILE`` reads
the settings a run saved in its ``config.json`` (flags given beside it win; see
:mod:`dinolab.train.config_file`) and ``--tensorboard`` adds a
:class:`~dinolab.train.tensorboard.TensorBoardLogger` to the run's callbacks.

Exit codes: 0 success; 2 bad flags or bad input (argparse errors, invalid settings, missing
or corrupt files), with a message naming the problem; 1 a run that failed while training
(e.g. a NaN loss, whose message names the step).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "build_parser", "add_config_arguments", "bool_flag"]

# Integer flags that must be at least 1; every other integer flag must be at least 0.
_POSITIVE_INTS = {
    "epochs",
    "batch_size_per_gpu",
    "patch_size",
    "out_dim",
    "head_hidden_dim",
    "head_bottleneck_dim",
    "global_crops_size",
    "local_crops_size",
    "num_images",
    "num_eval_images",
    "knn_k",
    "eval_batch_size",
    "img_size",
    "teacher_width",
    "student_width",
    "teacher_patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "nb_knn",
    "n_last_blocks",
    "image_size",
}


def bool_flag(text: str) -> bool:
    """Parse ``true/false``, ``1/0``, ``yes/no``, ``on/off`` (official DINO's ``bool_flag``)."""
    low = text.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _int_type(name: str) -> Any:
    minimum = 1 if name in _POSITIVE_INTS else 0

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _float_type(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


_float_type.__name__ = "number"


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, exclude: Sequence[str] = ()
) -> None:
    """Add one ``--<field>`` flag per field of the dataclass ``cls`` (help from its metadata).

    Fields listed in ``cls.cli_exclude`` or in ``exclude`` are left out. Booleans accept
    ``--flag`` (true), ``--flag false`` or ``--no-flag``; pairs take two numbers;
    ``int | None`` / ``str | None`` default to None.
    """
    hints = typing.get_type_hints(cls)
    excluded = set(getattr(cls, "cli_exclude", ())) | set(exclude)
    for f in dataclasses.fields(cls):
        if f.name in excluded:
            continue
        meta = dict(f.metadata)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kw: dict[str, Any] = {"default": default, "dest": f.name}
        help_text = meta.get("help", "")
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = (
            next((a for a in args if a is not type(None)), hint)
            if args and type(None) in args
            else hint
        )
        origin = typing.get_origin(base)
        if base is bool:
            kw.update(type=bool_flag, nargs="?", const=True, metavar="BOOL")
        elif origin is tuple:
            elem = typing.get_args(base)[0]
            is_var = typing.get_args(base)[-1] is Ellipsis
            kw["nargs"] = meta.get("nargs", "+" if is_var else len(typing.get_args(base)))
            kw["type"] = (
                _float_type if elem is float else (_int_type(f.name) if elem is int else str)
            )
        elif base is int:
            kw["type"] = _int_type(f.name)
        elif base is float:
            kw["type"] = _float_type
        else:
            kw["type"] = str
        if "choices" in meta:
            kw["choices"] = meta["choices"]
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        kw["help"] = f"{help_text} (default: {shown})".replace("%", "%%")
        parser.add_argument(f"--{f.name}", **kw)
        if base is bool:
            parser.add_argument(
                f"--no-{f.name}",
                dest=f.name,
                action="store_false",
                help=f"Same as --{f.name} false.",
            )


def _recipes() -> dict[str, tuple[type, Any]]:
    from dinolab.train.recipes import RECIPES

    return RECIPES


_DESCRIPTIONS = {
    "dino": "Self-distillation with no labels (official DINO): a student learns to match an "
    "EMA teacher across multi-crop views. Writes checkpoint.pth, JSON-lines logs and "
    "plots to --output_dir; the defaults train the course teacher (vit_micro on the "
    "bundled dark shapes, about 26 CPU-minutes).",
    "kd": "Knowledge distillation (seed 004, done soundly): train TeacherNet on labels, a "
    "label-only StudentNet baseline, and StudentNets distilled with and without a "
    "hard-label term, each with an EMA of its weights; writes results.md.",
    "distill": "Distil a frozen teacher (a `dinolab train dino` checkpoint or an official "
    "DINO/DINOv2/DINOv3 file, DINOv3 also in timm's or transformers' layout) into a smaller "
    "ViT with DINO + iBOT + KoLeo + CLS-token + SPD losses (optionally DINOv3's Gram "
    "anchoring); linear probe at the end.",
    "knn": "Weighted k-NN accuracy (official DINO's eval_knn) of a checkpoint's frozen features.",
    "linear": "Linear-probe accuracy (official DINO's eval_linear) of a checkpoint's frozen "
    "features.",
    "export": "Write a checkpoint's teacher (or student) backbone as a plain state dict (.pth) and "
    "as safetensors, in dinolab's key layout or timm's, and print how to load it.",
    "attention": "Official DINO's visualize_attention: per head, the last block's CLS attention "
    "and the smallest set of patches holding --threshold (60%) of it, overlaid on each image; "
    "writes img.png, attn-head{j}.png and attention_figure.png per image.",
    "pca": "DINOv2's PCA colours: one PCA over the patch features of all the images, its first "
    "component splitting foreground from background, the foreground coloured by a second PCA; "
    "writes img.png, pca.png and pca_figure.png per image.",
}


def build_parser() -> argparse.ArgumentParser:
    """The full ``dinolab`` parser (sub-commands ``train <recipe>`` and ``eval <mode>``)."""
    from dinolab import __version__
    from dinolab.train.recipes.evaluate import EvalConfig

    parser = argparse.ArgumentParser(
        prog="dinolab",
        description="Train, evaluate, export and visualise DINO-style self-supervised and "
        "distilled models.",
        epilog="Run `dinolab train dino --help` for a recipe's flags. Several processes: "
        "torchrun --nproc_per_node=N -m dinolab train dino ...",
    )
    parser.add_argument("--version", action="version", version=f"dinolab {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{train,eval,export,visualize}"
    )
    train = commands.add_parser(
        "train", help="train a recipe: dino, kd or distill", description="Train one of the recipes."
    )
    recipes = train.add_subparsers(dest="recipe", required=True, metavar="{dino,kd,distill}")
    for name, (cls, _) in _recipes().items():
        sub = recipes.add_parser(
            name, help=_DESCRIPTIONS[name].split(":")[0], description=_DESCRIPTIONS[name]
        )
        add_config_arguments(sub, cls)
        _add_train_only_arguments(sub)
    evaluate = commands.add_parser(
        "eval",
        help="evaluate a checkpoint: knn or linear",
        description="Evaluate a checkpoint's frozen features.",
    )
    modes = evaluate.add_subparsers(dest="mode", required=True, metavar="{knn,linear}")
    for name in ("knn", "linear"):
        sub = modes.add_parser(name, help=_DESCRIPTIONS[name], description=_DESCRIPTIONS[name])
        # Official DINO dumps features from eval_knn.py only.
        add_config_arguments(sub, EvalConfig, exclude=() if name == "knn" else ("dump_features",))
    from dinolab.tools.export import ExportConfig
    from dinolab.tools.visualize import AttentionConfig, PCAConfig

    export = commands.add_parser(
        "export", help="export a checkpoint's backbone (.pth, .safetensors)",
        description=_DESCRIPTIONS["export"],
    )
    add_config_arguments(export, ExportConfig)
    visualize = commands.add_parser(
        "visualize",
        help="draw a ViT's attention maps or PCA colours as PNGs",
        description="What a trained ViT looks at, written as PNGs (matplotlib).",
    )
    kinds = visualize.add_subparsers(dest="kind", required=True, metavar="{attention,pca}")
    for name, cls in (("attention", AttentionConfig), ("pca", PCAConfig)):
        sub = kinds.add_parser(
            name, help=_DESCRIPTIONS[name].split(":")[0], description=_DESCRIPTIONS[name]
        )
        add_config_arguments(sub, cls)
    return parser


def _add_train_only_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--tensorboard``: flags of the command line, not of the recipe."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="Read the settings from FILE, a config.json that a run wrote to its output_dir "
        "(or a JSON object of flag names and values written by hand); flags given on the "
        "command line override it. A key that is no flag of this recipe is an error. Repeat a "
        "run with --config runs/a/config.json --output_dir runs/b. (default: None)",
    )
    parser.add_argument(
        "--tensorboard",
        type=bool_flag,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="Also log every step's and epoch's metrics as TensorBoard event files in "
        "<output_dir>/tensorboard (needs pip install 'dinolab[tensorboard]'); the JSON-lines "
        "logs are written either way. (default: False)",
    )


def _subparser(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    """The parser of a sub-command, e.g. ``_subparser(parser, "train", "dino")``."""
    for name in names:
        action = next(
            a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
        )
        parser = action.choices[name]
    return parser


def _config_value(action: argparse.Action, key: str, value: Any) -> Any:
    """A config file's ``value`` for flag ``--key``, checked as the flag checks its text."""
    nargs = action.nargs
    if nargs in (None, "?"):
        if isinstance(value, list | dict):
            raise ValueError(f"{key}: expected one value, got {value!r}")
        items = [value]
    else:
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list of values, got {value!r}")
        if isinstance(nargs, int) and len(value) != nargs:
            raise ValueError(f"{key}: expected {nargs} values, got {value!r}")
        if not value:
            raise ValueError(f"{key}: expected at least one value, got []")
        items = value
    converted = []
    for item in items:
        if isinstance(item, list | dict):
            raise ValueError(f"{key}: expected a number, string or boolean, got {item!r}")
        text = str(item).lower() if isinstance(item, bool) else str(item)
        try:
            parsed = action.type(text) if action.type is not None else text
        except (argparse.ArgumentTypeError, ValueError) as err:
            raise ValueError(f"{key}: {err}") from None
        if action.choices is not None and parsed not in action.choices:
            choices = ", ".join(map(repr, action.choices))
            raise ValueError(f"{key}: {parsed!r} is not one of {choices}")
        converted.append(parsed)
    return converted[0] if nargs in (None, "?") else tuple(converted)


def _config_defaults(
    parser: argparse.ArgumentParser, cls: type, path: str, command: str
) -> dict[str, Any]:
    """The settings of a ``--config`` file as ``parser``'s defaults, each value checked.

    Raises:
        FileNotFoundError, ValueError: as :func:`dinolab.train.config_file.read_config_file`,
            or a value that its flag would refuse (the message names the key and the file).
    """
    from dinolab.train.config_file import read_config_file

    values = read_config_file(path, cls, command)
    hints = typing.get_type_hints(cls)
    flags = {
        a.dest: a
        for a in parser._actions
        if a.option_strings and a.option_strings[0] == f"--{a.dest}"
    }
    defaults: dict[str, Any] = {}
    try:
        for key, value in values.items():
            if value is None:
                if type(None) not in typing.get_args(hints[key]):
                    raise ValueError(f"{key}: null, but the setting needs a value")
                defaults[key] = None
            elif key in flags:
                defaults[key] = _config_value(flags[key], key, value)
            else:  # a setting without a flag (distill's momentum_teacher): taken as it is
                defaults[key] = tuple(value) if isinstance(value, list) else value
    except ValueError as err:
        raise ValueError(f"--config {str(path)!r}: {err}") from None
    # A run's own config.json (it names most settings) written before a setting existed: that
    # run had the setting's first default, not today's. A short hand-written file gets today's.
    if len(values) >= len(dataclasses.fields(cls)) // 2:
        added_later = getattr(cls, "settings_added_later", dict)()
        defaults.update({k: v for k, v in added_later.items() if k not in values})
    return defaults


def _to_config(cls: type, namespace: argparse.Namespace) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    values = {
        k: (tuple(v) if isinstance(v, list) else v)
        for k, v in vars(namespace).items()
        if k in names
    }
    return cls(**values)


def use_fast_gpu_kernels(device: str) -> bool:
    """On a GPU, as official DINO and DINOv2 scripts do: cuDNN picks the fastest convolution
    algorithm for the input shapes (``cudnn.benchmark``, DINO) and float32 matrix products use
    TF32 tensor cores (DINOv2). A process-wide setting, so the command line makes it, not the
    library. Returns whether it did (not on the CPU, nor with ``--device cpu``)."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return False
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dinolab`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.config:
        # The file's settings become the recipe's defaults; parsing again lets the flags
        # given on the command line win over them.
        sub = _subparser(parser, "train", args.recipe)
        cls = _recipes()[args.recipe][0]
        try:
            defaults = _config_defaults(sub, cls, args.config, f"dinolab train {args.recipe}")
        except (ValueError, FileNotFoundError) as err:
            sub.error(str(err))  # exits with code 2
        sub.set_defaults(**defaults)
        args = parser.parse_args(argv)
    from dinolab.train import distributed as du
    from dinolab.train.engine import NonFiniteLossError

    try:
        if args.command == "train":
            result = _train(args)
        elif args.command == "eval":
            from dinolab.train.recipes.evaluate import EvalConfig, eval_knn, eval_linear

            cfg = _to_config(EvalConfig, args)
            result = eval_knn(cfg) if args.mode == "knn" else eval_linear(cfg)
        elif args.command == "export":
            from dinolab.tools.export import ExportConfig, export_backbone

            done = export_backbone(_to_config(ExportConfig, args))
            print(
                f"dinolab export: wrote {done['pth']} and {done['safetensors']} "
                f"({done['tensors']} tensors of a {done['backbone']['type']}, "
                f"{done['layout']} layout)"
            )
            print(f"load it: {done['load']}")
            return 0
        else:
            result = _visualize(args)
        if du.is_main_process():
            _print_result(result)
        return 0
    except NonFiniteLossError as err:
        print(f"dinolab: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        print(f"dinolab: error: {err}", file=sys.stderr)
        return 2
    except (OSError, ImportError) as err:  # an output folder that is read-only, a full disk,
        print(f"dinolab: error: {err}", file=sys.stderr)  # an optional package not installed
        return 1
    finally:
        du.cleanup()


def _train(args: argparse.Namespace) -> Any:
    """``dinolab train <recipe>``: the recipe's run, with TensorBoard if asked."""
    import os

    cls, train_fn = _recipes()[args.recipe]
    cfg = _to_config(cls, args)
    use_fast_gpu_kernels(cfg.device)
    # Before the process group exists: torchrun's RANK tells the main process.
    if args.recipe == "kd" and not cfg.resume and os.environ.get("RANK", "0") == "0":
        # Its engines save each phase's settings in <output_dir>/<phase>/; --config reads
        # the recipe's, written here as the engine writes dino's and distill's.
        from dinolab.train.config_file import write_config_file

        write_config_file(cfg)
    if not args.tensorboard:
        return train_fn(cfg)
    from dinolab.train.tensorboard import TensorBoardLogger

    with TensorBoardLogger() as logger:
        return train_fn(cfg, callbacks=[logger])


def _visualize(args: argparse.Namespace) -> dict[str, Any]:
    """``dinolab visualize attention|pca``; the result names the folder, not every PNG."""
    from dinolab.tools.visualize import (
        AttentionConfig,
        PCAConfig,
        visualize_attention,
        visualize_pca,
    )

    if args.kind == "attention":
        result = visualize_attention(_to_config(AttentionConfig, args))
    else:
        result = visualize_pca(_to_config(PCAConfig, args))
    files = result.pop("files")
    return {**result, "pngs": len(files)}


def _print_result(result: Any) -> None:
    import json

    def plain(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 4)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    print(json.dumps(plain(result), indent=2))


if __name__ == "__main__":
    sys.exit(main())
