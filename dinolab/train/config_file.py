"""Read the ``config.json`` a run wrote, to train again with its settings (``--config FILE``).

Every run writes its configuration, every field of its recipe's config dataclass, to
``<output_dir>/config.json``. ``dinolab train <recipe> --config FILE`` reads such a file back
as the defaults of that command's flags, so that the flags given beside it override it:
``dinolab train dino --config runs/a/config.json --output_dir runs/b --seed 1`` repeats run
``a`` with another seed. The file may also be written by hand and hold only some settings.

This module reads and checks the file; the command line (:mod:`dinolab.cli`) checks each
value as it checks the flag of the same name.

Examples:
    >>> from dinolab.train.recipes import DINOConfig
    >>> read_config_file("runs/dino/config.json", DINOConfig)["epochs"]  # doctest: +SKIP
    30
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_NAME", "read_config_file", "write_config_file"]

#: The file a run's settings are saved in, inside its output directory.
CONFIG_NAME = "config.json"


def read_config_file(path: str | os.PathLike[str], cls: type, command: str = "") -> dict[str, Any]:
    """The settings a JSON file holds, every key a field of the dataclass ``cls``.

    Args:
        path: a ``config.json`` written by a run (or by hand): one JSON object.
        cls: the recipe's config dataclass (``DINOConfig``...).
        command: the command it is read for, for the messages (``dinolab train dino``).

    Returns:
        ``{field name: JSON value}`` (lists stay lists; the caller checks the values).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is a folder, not JSON, not one JSON object, or has keys that are
            no setting of ``cls`` (each named, with the closest setting when there is one).
    """
    p = Path(path)
    where = f"--config {str(p)!r}"
    if p.is_dir():
        raise ValueError(f"{where} is a folder; give the config.json file in it")
    if not p.is_file():
        raise FileNotFoundError(f"{where} does not exist")
    try:
        values = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{where} is not a JSON file ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(
            f"{where} holds a JSON {type(values).__name__}, not an object of settings "
            '({"epochs": 10, ...}, as a run\'s config.json)'
        )
    names = [f.name for f in fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        described = []
        for key in unknown:
            close = difflib.get_close_matches(key, names, n=1)
            described.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        who = f"of {command}" if command else f"of {cls.__name__}"
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(described)}: not settings {who}. Was the file "
            "written by another recipe? Its keys must be flag names of this command "
            f"(`{command or 'dinolab train <recipe>'} --help`)"
        )
    return values


def write_config_file(cfg: Any) -> Path:
    """Write the dataclass ``cfg`` to ``<cfg.output_dir>/config.json``, as the engine does.

    For a recipe whose engines write elsewhere: the ``kd`` recipe trains each phase with its
    own engine, in ``<output_dir>/<phase>/``, so the recipe's own settings, which ``--config``
    reads back, are written by the command line with this.

    Raises:
        ValueError: ``output_dir`` is a file.
    """
    from dinolab.train.checkpoint import plain_config

    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {str(out)!r} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_NAME
    path.write_text(json.dumps(plain_config(asdict(cfg)), indent=2) + "\n")
    return path
