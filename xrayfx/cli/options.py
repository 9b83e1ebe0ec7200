"""Option types shared by several commands, so each is spelled and documented once.

Fixed choices are ``Literal`` types: ``--help`` lists them and a typo exits 2 with the list. They
repeat the library's tuples (``RUNTIMES``, ``HEADS`` …) so that ``xrayfx --help`` imports no
library code; tests/test_cli_choices.py checks they agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

RuntimeName = Literal["onnxruntime", "openvino"]  # xrayfx.inference.runtimes.RUNTIMES
PrecisionName = Literal["fp32", "fp16", "int8", "bf16"]  # xrayfx.inference.runtimes.PRECISIONS
DeviceName = Literal["cpu", "cuda", "tensorrt", "auto"]  # xrayfx.inference.extractor.DEVICES
PreprocessName = Literal["imagenet", "paper"]  # xrayfx.models.registry.PREPROCESS_OPTIONS
ResizeName = Literal["stretch", "crop"]  # xrayfx.models.registry.RESIZE_OPTIONS
HeadName = Literal["paper", "logreg", "linear-svm", "rbf-svm", "knn"]  # xrayfx.study.heads.HEADS
TrainerName = Literal["fast", "reference"]  # xrayfx.study.heads.paper.TRAINERS
BalanceName = Literal["smote", "random", "class-weight", "none"]  # xrayfx.study.balance.BALANCE_METHODS
NormalSourceName = Literal["kermany", "mooney", "nih", "nih+cohen"]  # xrayfx.data.sources.paper.NORMAL_SOURCES

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
    PreprocessName,
    typer.Option("--preprocess", help="'imagenet': the backbone's own Keras preprocessing; 'paper': scale to [0,1]."),
]
Resize = Annotated[
    ResizeName, typer.Option("--resize", help="'stretch' to the input size (the paper) or 'crop' (shorter side, centre crop).")
]


def cache_dir_callback(value: Path | None) -> Path | None:
    """Refuse a --cache-dir that is a file (exit 2) before a command starts."""
    from xrayfx.storage import check_cache_dir

    return None if value is None else check_cache_dir(value)


CacheDir = Annotated[Path, typer.Option("--cache-dir", help="Cache folder (models, embeddings, runs, logs).",
                                        callback=cache_dir_callback)]
Device = Annotated[DeviceName, typer.Option("--device", help="Where inference runs ('auto': the best present).")]
Data = Annotated[
    Path, typer.Option("--data", "-d", help="A folder with one subfolder per class, or a CSV manifest (path,label,...).")
]
KeepDegenerate = Annotated[
    bool,
    typer.Option(
        "--keep-degenerate",
        help="Embed degenerate images (constant, under 32 px on a side, aspect ratio beyond 1:8, fully "
        "transparent) instead of skipping them with a reason.",
    ),
]
BitDepth = Annotated[
    Optional[int],
    typer.Option(
        "--bit-depth",
        help="Significant bits of 16-bit PNGs (8-16), e.g. 12 for 12-bit data stored without an sBIT chunk "
        "(it comes out near-black otherwise); part of the preprocessing and the cache key.",
    ),
]
