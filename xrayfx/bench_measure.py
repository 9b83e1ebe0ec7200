"""What ``xrayfx bench`` measures with: the machine (CPU, matrix-product rates), resident memory, timed engines."""

from __future__ import annotations

import math
import os
import platform
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xrayfx.exceptions import RuntimeSetupError
from xrayfx.inference.extractor import providers_for
from xrayfx.inference.runtimes import cpu_flags, cpu_has_bf16


# --------------------------------------------------------------------------------------------- machine


def cpu_info() -> dict[str, Any]:
    """The CPU: model, logical CPUs usable by this process, and the vector/matrix extensions that matter."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": name,
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "extensions": [f for f in wanted if f in flags],
        "bf16": cpu_has_bf16(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("OPENBLAS_", "OMP_", "MKL_"))},
    }


def matmul_rate(n: int = 4096, repeats: int = 3) -> dict[str, Any]:
    """The CPU's float32 matrix-product rate in GFLOP/s: numpy ``A @ B`` of two n×n matrices, best of ``repeats``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: threads started, pages touched
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    gflop = 2 * n**3 / 1e9
    return {
        "gflops": round(gflop / best, 1),
        "how": f"numpy float32 {n}x{n} @ {n}x{n}, best of {max(1, repeats)} (a multiply-add = 2 FLOP)",
        "blas": _blas_name(),
        "device": "cpu",
    }


def ort_matmul_rate(n: int = 4096, repeats: int = 3) -> dict[str, Any]:
    """The same float32 matrix product through onnxruntime's CPU MatMul (MLAS), best of ``repeats``.

    numpy's OpenBLAS can be held below the CPU's peak (``OPENBLAS_CORETYPE=Haswell``
    forces its AVX2 kernels on an AVX-512 CPU); MLAS picks its kernels from the CPU.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((n, n), dtype=np.float32) for k in ("a", "b")}
    session.run(None, feeds)
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - t0)
    return {"gflops": round(2 * n**3 / 1e9 / best, 1),
            "how": f"onnxruntime CPU MatMul float32 {n}x{n}, best of {max(1, repeats)}", "device": "cpu"}


def cpu_matmul_rates(n: int, repeats: int) -> dict[str, Any]:
    """numpy and onnxruntime float32 matrix-product rates; ``gflops`` is the better, the machine's ceiling."""
    numpy_rate = matmul_rate(n, repeats)
    ort_rate = ort_matmul_rate(n, repeats)
    return {"gflops": max(numpy_rate["gflops"], ort_rate["gflops"]), "numpy": numpy_rate, "onnxruntime": ort_rate,
            "how": f"float32 {n}x{n} matrix product, the faster of numpy ({numpy_rate['blas']}) and onnxruntime MLAS",
            "blas": numpy_rate["blas"], "device": "cpu"}


def _blas_name() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except (TypeError, AttributeError, KeyError):
        return "?"


def gpu_matmul_rate(device: str, precision: str, n: int = 8192, repeats: int = 5) -> dict[str, Any]:
    """The GPU's matrix-product rate: an onnxruntime MatMul (fp32, or fp16 for fp16) on CUDA, best of ``repeats``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
        [helper.make_tensor_value_info("a", elem, [n, n]), helper.make_tensor_value_info("b", elem, [n, n])],
        [helper.make_tensor_value_info("c", elem, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    providers = [p for p in providers_for("cuda") if p != "TensorrtExecutionProvider"]
    session = ort.InferenceSession(model.SerializeToString(), providers=providers)
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeSetupError(f"the matmul probe fell back to {session.get_providers()[0]}; no GPU rate measured")
    dtype = np.float16 if precision == "fp16" else np.float32
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((n, n)).astype(dtype) for k in ("a", "b")}
    binding = session.io_binding()
    for k, v in feeds.items():
        binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0))
    binding.bind_output("c", "cuda")
    session.run_with_iobinding(binding)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        best = min(best, time.perf_counter() - t0)
    return {
        "gflops": round(2 * n**3 / 1e9 / best, 1),
        "how": f"onnxruntime MatMul {n}x{n} {precision if precision == 'fp16' else 'fp32'} on CUDA, inputs resident, best of {repeats}",
        "device": device,
    }


class RssSampler:
    """Samples this process's resident set every few milliseconds while active; ``peak_mb`` is the maximum."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak_mb = current_rss_mb()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RssSampler":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="xrayfx-rss", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, current_rss_mb())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, current_rss_mb())


def current_rss_mb() -> float:
    """This process's resident set now, in MiB (Linux /proc; the peak so far elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Calls timed for one configuration at one batch size."""

    latencies_s: list[float] = field(default_factory=list)
    repeat_images_per_s: list[float] = field(default_factory=list)
    calls: int = 1
    peak_rss_mb: float = 0.0

    def summary(self, batch: int) -> dict[str, Any]:
        lat = np.asarray(self.latencies_s) * 1e3
        ips = np.asarray(self.repeat_images_per_s)
        return {
            "images_per_s": {"median": rounded(np.median(ips)), "min": rounded(ips.min()), "max": rounded(ips.max())},
            "latency_ms": {"p50": rounded(np.percentile(lat, 50)), "p95": rounded(np.percentile(lat, 95))},
            "calls_per_repeat": self.calls,
            "repeats": len(ips),
        }


def rounded(x: float, nd: int = 3) -> float:
    """``x`` as a float rounded to ``nd`` digits (for the JSON record)."""
    return float(round(float(x), nd))


@dataclass
class Engine:
    """One built configuration: a runtime, device and precision running one backbone."""

    runtime: str
    device: str
    precision: str
    extractor: Any
    session_seconds: float
    model_rss_mb: float = 0.0
    variant_file: str | None = None

    @property
    def label(self) -> str:
        return f"{self.runtime}/{self.device}/{self.precision}"

    @property
    def providers(self) -> list[str]:
        return list(self.extractor.providers)

    def time_calls(self, images: np.ndarray, calls: int, timing: Timing) -> None:
        with RssSampler() as rss:
            t0 = time.perf_counter()
            for _ in range(calls):
                t = time.perf_counter()
                self.extractor(images)
                timing.latencies_s.append(time.perf_counter() - t)
            elapsed = time.perf_counter() - t0
        timing.repeat_images_per_s.append(calls * len(images) / elapsed)
        timing.peak_rss_mb = max(timing.peak_rss_mb, rss.peak_mb)
