"""How fast the frozen extractors run: ``xrayfx bench``.

For each backbone, every requested runtime × device × precision is built once
and timed side by side: after a warm-up, each repeat runs every configuration
(and the Keras baseline, if asked) in turn, in an order that rotates from one
repeat to the next, so that a noisy shared machine slows them alike and their
ratios stay meaningful. Per configuration and batch size the record holds:

* images/s (median, min, max over repeats; a repeat is ``calls`` timed batches,
  enough to last about :data:`MIN_REPEAT_S`), latency per batch (p50, p95 over
  every call);
* the execution providers actually used (a GPU session that fell back to CPU is
  refused at build time, see :class:`xrayfx.inference.extractor.Extractor`);
* memory: ``peak_rss_mb``, the process's resident set peak while the
  configuration ran (other configurations of the same backbone are loaded too),
  and ``model_rss_mb``, what building and warming its session added;
* GFLOP/s achieved (GFLOP per image from the export, a multiply-add counted as 2)
  and its fraction of the machine's matrix-product rate, measured in the same run,
  before and after the timings (on CPU the faster of numpy and onnxruntime's MLAS
  for a float32 4096×4096 product; an onnxruntime MatMul on a GPU);
* cosine similarity of its embeddings to onnxruntime fp32 on the same inputs;
* with ``baseline="keras"``: the Keras model (built by
  :func:`xrayfx.models.export.build_keras_backbone`) timed on the same inputs,
  interleaved with the others, in a child process so that TensorFlow's memory
  stays out of the other numbers; Keras is fed the already normalised float32
  batch (the ONNX graph does its own uint8 cast and normalisation).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xrayfx.bench_keras import KerasBaseline
from xrayfx.bench_measure import Engine, Timing, cpu_info, cpu_matmul_rates, current_rss_mb, gpu_matmul_rate, rounded
from xrayfx.exceptions import UsageError
from xrayfx.models.export import export_model
from xrayfx.inference.extractor import DEVICES, providers_for
from xrayfx.models.config import model_config
from xrayfx.models.custom import is_added_spec
from xrayfx.models.quantize import MAX_CALIBRATION_IMAGES, calibration_images, ensure_int8
from xrayfx.models.registry import get_spec
from xrayfx.inference.runtimes import PRECISIONS, RUNTIMES, check_openvino_install, combination_problem, make_extractor
from xrayfx.util import atomic_write_json, library_versions

SCHEMA = "xrayfx-bench/1"
PAPER_MODELS = ("inceptionv3", "inceptionresnetv2", "densenet201", "resnet101v2")
BASELINES = ("keras",)
DEFAULT_BATCH_SIZES = (1, 8, 32)
QUICK_BATCH_SIZE = 8
#: A repeat runs enough calls to last about this long (short calls are noisy).
MIN_REPEAT_S = 0.3
MAX_CALLS_PER_REPEAT = 200
#: Fields every record of the JSON holds (tests check them).
RECORD_FIELDS = (
    "model", "runtime", "device", "providers", "precision", "batch_size", "images_per_s", "latency_ms",
    "peak_rss_mb", "gflop_per_image", "gflops", "roofline_fraction", "baseline_images_per_s",
    "ratio_vs_baseline", "versions", "cpu",
)


# --------------------------------------------------------------------------------------------- options


def parse_list(value: str | Sequence[str], what: str, choices: Sequence[str] | None = None) -> list[str]:
    """Split a comma list (``"fp32,int8"``), dropping blanks and repeats; check names against ``choices``."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in (str(i).strip().lower() for i in items):
        if item and item not in out:
            out.append(item)
    if not out:
        raise UsageError(f"{what} needs at least one value; got {value!r}")
    if choices is not None:
        bad = [i for i in out if i not in choices]
        if bad:
            raise UsageError(f"Unknown {what} {', '.join(bad)}; choose from: {', '.join(choices)}")
    return out


def parse_models(value: str | Sequence[str], cache_dir: str | Path | None = None) -> list[str]:
    """Backbone names; ``paper`` stands for the paper's four backbones (added ones resolve in ``cache_dir``)."""
    out: list[str] = []
    for name in parse_list(value, "--model"):
        for m in (PAPER_MODELS if name == "paper" else (get_spec(name, cache_dir).name,)):
            if m not in out:
                out.append(m)
    return out


def parse_batch_sizes(value: str | Sequence[int | str]) -> list[int]:
    """Positive batch sizes from ``"1,8,32"``."""
    out = []
    for item in parse_list(value if isinstance(value, str) else [str(v) for v in value], "--batch-sizes"):
        try:
            b = int(item)
        except ValueError:
            raise UsageError(f"--batch-sizes takes positive integers like 1,8,32; got {item!r}") from None
        if b < 1:
            raise UsageError(f"--batch-sizes takes positive integers like 1,8,32; got {b}")
        out.append(b)
    return out


# --------------------------------------------------------------------------------------------- the run


@dataclass
class BenchPlan:
    """What to run, resolved and checked before any export."""

    models: list[str]
    combos: list[tuple[str, str, str]]  # (runtime, device, precision)
    skipped: list[dict[str, str]]
    batch_sizes: list[int]
    repeats: int
    warmup: int
    min_repeat_s: float
    baseline: str | None
    quick: bool


def plan_bench(
    models: str | Sequence[str],
    runtimes: str | Sequence[str] = "onnxruntime",
    devices: str | Sequence[str] = "cpu",
    precisions: str | Sequence[str] = "fp32",
    batch_sizes: str | Sequence[int] | None = None,
    repeats: int = 5,
    warmup: int = 2,
    baseline: str | None = None,
    quick: bool = False,
    cache_dir: str | Path | None = None,
) -> BenchPlan:
    """Check every option and the devices (a GPU asked for on a CPU-only machine is refused here)."""

    model_list = parse_models(models, cache_dir)
    runtime_list = parse_list(runtimes, "--runtime", RUNTIMES)
    device_list = parse_list(devices, "--device", [d for d in DEVICES if d != "auto"])
    precision_list = parse_list(precisions, "--precision", PRECISIONS)
    sizes = parse_batch_sizes(batch_sizes) if batch_sizes else None
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UsageError(f"--repeats must be a positive integer; got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise UsageError(f"--warmup must be a positive integer; got {warmup!r}")
    if baseline is not None and baseline not in BASELINES:
        raise UsageError(f"Unknown --baseline {baseline!r}; choose one of: {', '.join(BASELINES)}")
    if baseline == "keras" and any(get_spec(m, cache_dir).constructor == "onnx" for m in model_list):
        raise UsageError("--baseline keras needs Keras backbones; models added from ONNX files have no Keras "
                         "model. Fix: drop --baseline, or bench the added models separately.")
    for device in device_list:
        if device != "cpu" and "onnxruntime" in runtime_list:
            providers_for(device)  # RuntimeSetupError naming what this onnxruntime offers and the fix
    if "openvino" in runtime_list:
        check_openvino_install()
    combos, skipped = [], []
    for runtime, device, precision in itertools.product(runtime_list, device_list, precision_list):
        problem = combination_problem(runtime, precision, device)
        if problem:
            skipped.append({"runtime": runtime, "device": device, "precision": precision, "reason": problem})
        else:
            combos.append((runtime, device, precision))
    if not combos:
        raise UsageError("no runtime/device/precision combination asked for is offered: " + "; ".join(
            s["reason"] for s in skipped))
    if quick:
        model_list = model_list[:1]
        sizes = (sizes or [QUICK_BATCH_SIZE])[:1]
        repeats = min(repeats, 3)
        warmup = 1
    return BenchPlan(
        models=model_list, combos=combos, skipped=skipped, batch_sizes=sizes or list(DEFAULT_BATCH_SIZES),
        repeats=repeats, warmup=warmup, min_repeat_s=0.05 if quick else MIN_REPEAT_S, baseline=baseline, quick=quick,
    )


def run_bench(
    plan: BenchPlan,
    *,
    weights: str = "none",
    seed: int = 0,
    cache_dir: str | Path = "cache",
    data: str | Path | None = None,
    calibration: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run a checked plan; returns the JSON document (machine, settings, one record per configuration)."""

    say = log or (lambda m: None)
    cpu = cpu_info()
    versions = library_versions()
    say("measuring the machine's matrix-product rate…")
    mm_n, mm_rep = (2048, 2) if plan.quick else (4096, 3)
    first = cpu_matmul_rates(mm_n, mm_rep)
    rates: dict[tuple[str, str], dict[str, Any]] = {("cpu", "fp32"): first}
    for _, device, precision in plan.combos:
        if device != "cpu" and (device, precision) not in rates:
            rates[(device, precision)] = gpu_matmul_rate(device, precision)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["xrayfx", *sys.argv[1:]]) if Path(sys.argv[0]).name == "xrayfx" else " ".join(sys.argv),
        "machine": {"cpu": cpu, "matmul": {f"{d}/{p}": r for (d, p), r in rates.items()}, "versions": versions,
                    "loadavg_start": _loadavg()},
        "settings": {
            "models": plan.models, "combinations": [list(c) for c in plan.combos], "batch_sizes": plan.batch_sizes,
            "repeats": plan.repeats, "warmup": plan.warmup, "min_repeat_s": plan.min_repeat_s,
            "baseline": plan.baseline, "weights": weights, "seed": seed, "quick": plan.quick,
            "inputs": f"first images of {data}" if data else "random uint8 images (seed 0)",
        },
        "skipped": plan.skipped,
        "records": [],
    }
    for name in plan.models:
        added = is_added_spec(get_spec(name, cache_dir))
        config = model_config(name, "imagenet" if added else weights, seed, cache_dir=cache_dir)  # added: its own
        exported = export_model(config, cache_dir, log=log)
        gflop = exported.sidecar.get("gflops_per_image")
        images_all = _inputs(config, max(plan.batch_sizes), data)
        engines = _build_engines(exported, plan, calibration, data, images_all, say)
        baseline = None
        try:
            if plan.baseline == "keras":
                say(f"{name}: building the Keras baseline in a child process…")
                baseline = KerasBaseline(config)
            for batch in plan.batch_sizes:
                images = images_all[:batch]
                say(f"{name}: batch {batch}, {len(engines)} configuration(s){' + Keras' if baseline else ''}…")
                results = _time_side_by_side(engines, baseline, images, plan)
                reference = _reference_embeddings(engines, images)
                for engine in engines:
                    timing = results[engine.label]
                    rate = rates[(engine.device if engine.device != "cpu" else "cpu",
                                  engine.precision if engine.device != "cpu" else "fp32")]
                    record = _record(name, weights, engine, batch, timing, gflop, rate, cpu, versions)
                    record["cosine_vs_fp32"] = _cosine(reference, engine.extractor(images)) if reference is not None else None
                    if baseline is not None:
                        b = results["keras"].summary(batch)
                        record["baseline"] = "keras"
                        record["baseline_images_per_s"] = b["images_per_s"]["median"]
                        record["baseline_detail"] = {
                            **b, "peak_rss_mb": rounded(results["keras"].peak_rss_mb, 1), "call": baseline.call,
                            "device": baseline.device, "build_seconds": baseline.build_seconds,
                            "inputs": "the same images, normalised to float32 before timing",
                        }
                        record["ratio_vs_baseline"] = rounded(
                            record["images_per_s"]["median"] / record["baseline_images_per_s"], 3
                        )
                    doc["records"].append(record)
                    if on_record:
                        on_record(record)
        finally:
            if baseline is not None:
                baseline.close()
            del engines
    # The machine's rate again at the end: the better of the two is the ceiling the records are set against.
    last = cpu_matmul_rates(mm_n, mm_rep)
    best = max(first["gflops"], last["gflops"])
    rates[("cpu", "fp32")] = {**first, "gflops": best, "start": first, "end": last,
                              "how": first["how"] + "; measured before and after the runs, the best kept"}
    doc["machine"]["matmul"]["cpu/fp32"] = rates[("cpu", "fp32")]
    doc["machine"]["loadavg_end"] = _loadavg()
    for record in doc["records"]:
        if record["device"] == "cpu":
            record["matmul_gflops"] = best
            if record["gflops"] is not None:
                record["roofline_fraction"] = rounded(record["gflops"] / best, 3)
    return doc


def _loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other processes competing for the cores), where the OS tells."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _inputs(config: Any, n: int, data: str | Path | None) -> np.ndarray:
    """The timed batch: the first ``n`` decodable images of ``data`` (cycled if fewer), or seeded random pixels."""
    h, w = config.preprocessing.input_size
    if data is None:
        return np.random.default_rng(0).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)

    _, images = calibration_images(data, config.preprocessing, n=min(n, MAX_CALIBRATION_IMAGES))
    reps = math.ceil(n / len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:n])


def _build_engines(
    exported: Any, plan: BenchPlan, calibration: Any, data: Any, images: np.ndarray, say: Callable[[str], None]
) -> list[Engine]:

    engines = []
    for runtime, device, precision in plan.combos:
        model_path = None
        if precision == "int8":

            variant = ensure_int8(exported, calibration=calibration, data=data, log=say)
            model_path = variant.path
        rss0 = current_rss_mb()
        t0 = time.perf_counter()
        extractor = make_extractor(exported, runtime, precision, device, model_path=model_path)
        seconds = time.perf_counter() - t0
        for _ in range(plan.warmup):
            extractor(images[: max(plan.batch_sizes)])
        engine = Engine(runtime, device, precision, extractor, round(seconds, 3),
                        variant_file=Path(model_path).name if model_path else None)
        engine.model_rss_mb = rounded(max(0.0, current_rss_mb() - rss0), 1)
        engines.append(engine)
    return engines


def _time_side_by_side(
    engines: list[Engine], baseline: KerasBaseline | None, images: np.ndarray, plan: BenchPlan
) -> dict[str, Timing]:
    """Warm up each, then run ``plan.repeats`` rounds; each round times every runner once, rotating the order."""
    runners: list[tuple[str, Any]] = [(e.label, e) for e in engines]
    timings: dict[str, Timing] = {}
    for label, engine in runners:
        for _ in range(plan.warmup):
            engine.extractor(images)
        t0 = time.perf_counter()
        engine.extractor(images)
        timings[label] = Timing(calls=_calls_for(time.perf_counter() - t0, plan.min_repeat_s))
    if baseline is not None:
        runners.append(("keras", baseline))
        timings["keras"] = Timing(calls=_calls_for(baseline.set_images(images, plan.warmup), plan.min_repeat_s))
    for r in range(plan.repeats):
        k = r % len(runners)
        for label, runner in runners[k:] + runners[:k]:
            runner.time_calls(images, timings[label].calls, timings[label])
    return timings


def _calls_for(seconds_per_call: float, min_repeat_s: float) -> int:
    return int(min(MAX_CALLS_PER_REPEAT, max(1, math.ceil(min_repeat_s / max(seconds_per_call, 1e-6)))))


def _reference_embeddings(engines: list[Engine], images: np.ndarray) -> np.ndarray | None:
    for e in engines:
        if (e.runtime, e.precision) == ("onnxruntime", "fp32"):
            return e.extractor(images)
    return None


def _cosine(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    num = np.sum(a.astype(np.float64) * b, axis=1)
    den = np.linalg.norm(a.astype(np.float64), axis=1) * np.linalg.norm(b.astype(np.float64), axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return {"min": float(np.nanmin(cos)), "mean": float(np.nanmean(cos))}


def _record(
    model: str, weights: str, engine: Engine, batch: int, timing: Timing, gflop: float | None,
    rate: dict[str, Any], cpu: dict[str, Any], versions: dict[str, str],
) -> dict[str, Any]:
    s = timing.summary(batch)
    median = s["images_per_s"]["median"]
    gflops = gflop * median if gflop else None
    return {
        "model": model,
        "weights": weights,
        "runtime": engine.runtime,
        "device": engine.device,
        "providers": engine.providers,
        "precision": engine.precision,
        "batch_size": batch,
        **s,
        "peak_rss_mb": rounded(timing.peak_rss_mb, 1),
        "model_rss_mb": engine.model_rss_mb,
        "session_seconds": engine.session_seconds,
        "variant_file": engine.variant_file,
        "gflop_per_image": gflop,
        "gflops": rounded(gflops, 1) if gflops is not None else None,
        "matmul_gflops": rate["gflops"],
        "roofline_fraction": rounded(gflops / rate["gflops"], 3) if gflops is not None else None,
        "baseline": None,
        "baseline_images_per_s": None,
        "ratio_vs_baseline": None,
        "versions": versions,
        "cpu": cpu,
    }


def write_json(doc: dict[str, Any], path: str | Path) -> Path:
    """Write the bench document atomically."""
    atomic_write_json(path, doc)
    return Path(path)


def render_table(doc: dict[str, Any]) -> Any:
    """A rich table of the records, one row per configuration and batch size."""
    from rich.table import Table

    mm = doc["machine"]["matmul"].get("cpu/fp32", {})
    table = Table(title=f"xrayfx bench: {doc['machine']['cpu']['model']}, matmul {mm.get('gflops', '?')} GFLOP/s")
    short = {"onnxruntime": "ort", "openvino": "ov"}
    for col in ("model", "config", "batch", "img/s (min-max)", "p50/p95 ms", "GFLOP/s (of mm)", "MiB", "cos fp32",
                "x Keras"):
        table.add_column(col, justify="left" if col in ("model", "config") else "right")
    last = None
    for r in doc["records"]:
        ips = r["images_per_s"]
        cos = r.get("cosine_vs_fp32")
        table.add_row(
            r["model"] if r["model"] != last else "",
            f"{short.get(r['runtime'], r['runtime'])} {r['precision']} {r['device']}",
            str(r["batch_size"]),
            f"{ips['median']:.1f} ({ips['min']:.0f}-{ips['max']:.0f})",
            f"{r['latency_ms']['p50']:.0f}/{r['latency_ms']['p95']:.0f}",
            f"{r['gflops']:.0f} ({r['roofline_fraction']:.0%})" if r["gflops"] is not None else "-",
            f"{r['peak_rss_mb']:.0f}",
            f"{cos['min']:.4f}" if cos else "-",
            f"{r['ratio_vs_baseline']:.2f}" if r["ratio_vs_baseline"] is not None else "-",
        )
        last = r["model"]
    return table
