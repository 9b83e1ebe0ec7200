"""`xrayfx bench`: options, refusals, and the JSON record of a quick run."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from conftest import MOBILENET_WEIGHTS, run_cli_inprocess as run
from xrayfx.bench import (
    PAPER_MODELS,
    RECORD_FIELDS,
    parse_batch_sizes,
    parse_list,
    parse_models,
    plan_bench,
    render_table,
)
from xrayfx.bench_measure import RssSampler, matmul_rate
from xrayfx.exceptions import RuntimeSetupError, UsageError

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


def _cuda_present() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


# ----------------------------------------------------------------------------------- options


def test_comma_lists_and_the_paper_alias():
    assert parse_models("paper,mobilenet") == [*PAPER_MODELS, "mobilenet"]
    assert parse_models("DenseNet201, densenet201") == ["densenet201"]
    assert parse_batch_sizes("1, 8,32") == [1, 8, 32]
    assert parse_list("fp32,int8,fp32", "--precision") == ["fp32", "int8"]


@pytest.mark.parametrize("bad", ["0", "eight", ","])
def test_bad_batch_sizes_are_refused(bad):
    with pytest.raises(UsageError, match="--batch-sizes"):
        parse_batch_sizes(bad)


def test_unknown_names_list_the_choices():
    with pytest.raises(UsageError, match="choose from"):
        plan_bench("mobilenet", precisions="fp8")
    with pytest.raises(UsageError, match="choose one of"):
        plan_bench("resnet9000")
    with pytest.raises(UsageError, match="--baseline"):
        plan_bench("mobilenet", baseline="torch")


def test_combinations_not_offered_are_skipped_and_listed():
    plan = plan_bench("mobilenet", runtimes="onnxruntime", precisions="fp32,bf16")
    assert plan.combos == [("onnxruntime", "cpu", "fp32")]
    assert plan.skipped and "bf16" in plan.skipped[0]["reason"]
    with pytest.raises(UsageError, match="no runtime/device/precision combination"):
        plan_bench("mobilenet", precisions="fp16")  # fp16 is for GPUs


def test_quick_is_one_backbone_one_batch_size_few_repeats():
    plan = plan_bench("paper", batch_sizes="1,8,32", repeats=9, quick=True)
    assert plan.models == ["inceptionv3"] and plan.batch_sizes == [1] and plan.repeats == 3 and plan.warmup == 1
    assert plan_bench("mobilenet", quick=True).batch_sizes == [8]


@pytest.mark.skipif(_cuda_present(), reason="this machine has CUDA")
def test_cuda_on_a_cpu_only_machine_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(RuntimeSetupError, match="CUDAExecutionProvider"):
        plan_bench("mobilenet", devices="cpu,cuda")
    code, _, err = run(["bench", "--model", "mobilenet", "--device", "cuda", "--quick",
                        "--cache-dir", str(tmp_path)], capsys)
    assert code == 1
    assert "--device cuda needs CUDAExecutionProvider" in err and "onnxruntime-gpu" in err
    assert not (tmp_path / "models").exists()  # refused before exporting anything


def test_matmul_rate_and_rss_sampler_report_positive_numbers():
    rate = matmul_rate(256, 1)
    assert rate["gflops"] > 0 and "256x256" in rate["how"]
    with RssSampler() as rss:
        block = np.ones((8 << 20,), np.uint8)  # 8 MiB touched
        block.sum()
    assert rss.peak_mb > 8


# ----------------------------------------------------------------------------------- a quick run


def test_bench_quick_writes_every_field_for_every_configuration(mobilenet_export, session_cache, tmp_path, capsys):
    if not MOBILENET_WEIGHTS.exists():
        pytest.skip("mobilenet weights not found")
    out = tmp_path / "bench.json"
    runtimes = "onnxruntime,openvino" if HAS_OPENVINO else "onnxruntime"
    code, stdout, err = run(
        ["bench", "--model", "mobilenet", "--weights", str(MOBILENET_WEIGHTS), "--quick", "--repeats", "2",
         "--runtime", runtimes, "--precision", "fp32", "--baseline", "keras", "--json", str(out),
         "--cache-dir", str(session_cache)],
        capsys,
    )
    assert code == 0, err
    assert "xrayfx bench" in stdout and "record(s) written" in stdout
    doc = json.loads(out.read_text())
    assert doc["schema"] == "xrayfx-bench/1"
    assert len(doc["records"]) == (2 if HAS_OPENVINO else 1)
    for r in doc["records"]:
        missing = [f for f in RECORD_FIELDS if f not in r]
        assert not missing, missing
        assert r["model"] == "mobilenet" and r["batch_size"] == 8 and r["device"] == "cpu"
        assert r["precision"] == "fp32" and r["providers"]
        ips = r["images_per_s"]
        assert 0 < ips["min"] <= ips["median"] <= ips["max"]
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p95"]
        assert r["peak_rss_mb"] > 0 and r["gflop_per_image"] > 0
        assert r["gflops"] == pytest.approx(r["gflop_per_image"] * ips["median"], rel=1e-2)
        assert r["roofline_fraction"] == pytest.approx(r["gflops"] / r["matmul_gflops"], rel=1e-2)
        assert r["baseline_images_per_s"] > 0
        assert r["ratio_vs_baseline"] == pytest.approx(ips["median"] / r["baseline_images_per_s"], rel=1e-2)
        assert r["versions"]["onnxruntime"] and r["cpu"]["usable_cpus"] >= 1
        assert r["cosine_vs_fp32"]["min"] > (0.9999999 if r["runtime"] == "onnxruntime" else 0.9999)
    assert doc["records"][0]["providers"] == ["CPUExecutionProvider"]
    if HAS_OPENVINO:
        assert doc["records"][1]["providers"] == ["OpenVINO:CPU:f32"]
    assert render_table(doc).row_count == len(doc["records"])
