"""`xrayfx demo`: the main job on the embedded default (synthetic phantoms), offline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

DEFAULT_MODEL = "efficientnet-lite0"
DEFAULT_WEIGHTS = "imagenet"


@dataclass
class DemoResult:
    out: Path
    data: Path
    lines: list[str] = field(default_factory=list)


def run_demo(
    out: str | Path = "demo-output",
    model: str = DEFAULT_MODEL,
    data: str | Path | None = None,
    weights: str = DEFAULT_WEIGHTS,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    n_phantoms: int = 100,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Phantoms (unless ``data`` is given) → export → extract; returns where the results are."""
    from xrayfx.export import model_config
    from xrayfx.phantoms import generate_phantoms
    from xrayfx.pipeline import extract

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir else out / "cache"
    if data is None:
        data = generate_phantoms(out / "phantoms", n=n_phantoms, seed=seed)
        log(f"data: {n_phantoms} SYNTHETIC phantom radiographs (not medical data) in {data.parent}")
    result = DemoResult(out=out, data=Path(data))
    config = model_config(model, weights, seed)
    if config.weights.is_random:
        log(f"NOTE: {model} runs with {config.weights.describe()}; these features come from random weights.")
    extracted = extract(data=data, config=config, cache_dir=cache_dir, log=log)
    result.lines.append(f"embeddings: {extracted.cache_path} ({extracted.embeddings.shape[0]} x "
                        f"{extracted.embeddings.shape[1]})")
    result.lines.append(f"ONNX model: {extracted.exported.path}")
    return result
