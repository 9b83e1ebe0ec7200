"""`xrayfx bench`: how fast each backbone runs, per runtime, device, precision and batch size."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from xrayfx.cli.options import CacheDir, Seed


def _log(message) -> None:
    from xrayfx.cli import err_console

    err_console.print(message, highlight=False, soft_wrap=True, markup=False)


def bench_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Backbone(s), comma-separated; 'paper' = the paper's four.")],
    weights: Annotated[
        str, typer.Option("--weights", help="'none' (random init: speed does not depend on weight values), "
                                            "'imagenet' or a Keras weight file.")
    ] = "none",
    seed: Seed = 0,
    runtime: Annotated[str, typer.Option("--runtime", help="onnxruntime[,openvino]")] = "onnxruntime",
    device: Annotated[str, typer.Option("--device", help="cpu[,cuda,tensorrt]")] = "cpu",
    precision: Annotated[str, typer.Option("--precision", help="fp32[,fp16,int8,bf16]; combinations a runtime "
                                                               "does not offer are skipped and listed.")] = "fp32",
    batch_sizes: Annotated[
        Optional[str], typer.Option("--batch-sizes", help="Comma list (default 1,8,32; --quick: 8).")
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repeats per configuration.")] = 5,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls before timing.")] = 2,
    baseline: Annotated[
        Optional[str], typer.Option("--baseline", help="'keras': time the Keras model on the same inputs, interleaved.")
    ] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every record to this JSON file.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="One backbone, one batch size, few repeats.")] = False,
    data: Annotated[
        Optional[Path], typer.Option("--data", "-d", help="Time on the first images of this folder or manifest "
                                                          "(default: random pixels; speed does not depend on them).")
    ] = None,
    calibration: Annotated[
        Optional[Path], typer.Option("--calibration", help="--precision int8: folder or manifest of radiographs "
                                                           "to calibrate on (first 64); default --data.")
    ] = None,
    cache_dir: CacheDir = Path("cache"),
) -> None:
    """Time the frozen extractors: images/s, latency, memory, GFLOP/s against the machine's matmul rate.

    Example: xrayfx bench --model densenet201 --runtime onnxruntime,openvino --precision fp32,bf16 --baseline keras
    """
    from xrayfx.bench import plan_bench, render_table, run_bench, write_json
    from xrayfx.cli import console

    plan = plan_bench(
        model, runtime, device, precision, batch_sizes, repeats, warmup, baseline, quick, cache_dir=cache_dir
    )
    for s in plan.skipped:
        from xrayfx.cli import styled

        _log(styled("skipped", "yellow", f" {s['runtime']}/{s['device']}/{s['precision']}: {s['reason']}"))
    doc = run_bench(plan, weights=weights, seed=seed, cache_dir=cache_dir, data=data, calibration=calibration, log=_log)
    console.print(render_table(doc))
    mm = doc["machine"]["matmul"]["cpu/fp32"]
    console.print(f"matrix product: {mm['gflops']} GFLOP/s ({mm['how']}, {mm['blas']})", highlight=False)
    if json_out is not None:
        write_json(doc, json_out)
        console.print(f"{len(doc['records'])} record(s) written to {json_out}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `xrayfx bench` to the app."""
    app.command("bench")(bench_cmd)
