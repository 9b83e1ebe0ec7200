"""Option types shared by several commands, so each is spelled and documented once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Model = Annotated[str, typer.Option("--model", "-m", help="Backbone name (see `xrayfx models`).")]
Weights = Annotated[
    str,
    typer.Option(
        "--weights",
        help="'imagenet' (Keras' download, or the installed package for efficientnet-lite0), "
        "'none' (random init, seeded; features carry no ImageNet signal) or a path to a Keras weight file.",
    ),
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the random initialisation with --weights none.")]
Preprocess = Annotated[
    str,
    typer.Option("--preprocess", help="'imagenet': the backbone's own Keras preprocessing; 'paper': scale to [0,1]."),
]
Resize = Annotated[
    str, typer.Option("--resize", help="'stretch' to the input size (the paper) or 'crop' (shorter side, centre crop).")
]


def cache_dir_callback(value: Path | None) -> Path | None:
    """Refuse a --cache-dir that is a file (exit 2) before a command starts."""
    from xrayfx.storage import check_cache_dir

    return None if value is None else check_cache_dir(value)


CacheDir = Annotated[Path, typer.Option("--cache-dir", help="Cache folder (models, embeddings, runs, logs).",
                                        callback=cache_dir_callback)]
Device = Annotated[str, typer.Option("--device", help="cpu | cuda | tensorrt | auto.")]
Data = Annotated[
    Path, typer.Option("--data", "-d", help="A folder with one subfolder per class, or a CSV manifest (path,label,...).")
]
