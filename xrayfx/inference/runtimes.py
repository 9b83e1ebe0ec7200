"""Inference runtimes and precisions: which session embeds a batch.

=============  =========  ===================  =========================================
runtime        precision  devices              model run
=============  =========  ===================  =========================================
onnxruntime    fp32       cpu, cuda, tensorrt  the fp32 export (the default)
onnxruntime    int8       cpu                  static QDQ int8 variant (:mod:`xrayfx.models.quantize`)
onnxruntime    fp16       cuda, tensorrt       fp16 variant (optional ``fp16`` extra)
openvino       fp32       cpu                  the fp32 export, read by OpenVINO
openvino       bf16       cpu with bf16        the fp32 export, computed in bfloat16
=============  =========  ===================  =========================================

OpenVINO is the optional ``openvino`` extra (tested with 2026.4.1). Its bf16 mode
needs a CPU with bf16 instructions (AVX512_BF16 or AMX-BF16); elsewhere OpenVINO
would compute in fp32 without saying so, so xrayfx refuses it.

Runtime and precision are part of the cache key (one cache group per
fingerprint, runtime and precision; an int8 group also names its calibration
set). The default stays onnxruntime fp32 on every machine: the lower-precision
variants are measured and documented in ``benchmarks/RESULTS.md`` and chosen
explicitly. Every parity and equality test pins ``onnxruntime`` at ``fp32``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from xrayfx.models import quantize
from xrayfx.exceptions import IntegrityError, RuntimeSetupError, UsageError
from xrayfx.inference.extractor import Extractor, check_image_batch, verified_sidecar
from xrayfx.models.config import ExportedModel

RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
DEFAULT_RUNTIME = "onnxruntime"
DEFAULT_PRECISION = "fp32"
#: The devices each (runtime, precision) runs on. ``auto`` picks the best present.
SUPPORTED: dict[tuple[str, str], tuple[str, ...]] = {
    ("onnxruntime", "fp32"): ("cpu", "cuda", "tensorrt", "auto"),
    ("onnxruntime", "int8"): ("cpu",),
    ("onnxruntime", "fp16"): ("cuda", "tensorrt"),
    ("openvino", "fp32"): ("cpu", "auto"),
    ("openvino", "bf16"): ("cpu", "auto"),
}
#: The OpenVINO release xrayfx is tested with (constraints.txt pins it).
OPENVINO_TESTED = "2026.4.1"
OPENVINO_INSTALL_HINT = f"`pip install 'xrayfx[openvino]'` (OpenVINO {OPENVINO_TESTED})"
_OV_TYPE = {"fp32": "f32", "bf16": "bf16"}
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class Embedder(Protocol):
    """Anything that maps uint8 NHWC batches to float32 (N, D) embeddings."""

    providers: list[str]

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def supported_devices(runtime: str, precision: str) -> tuple[str, ...]:
    """The devices a runtime runs a precision on (empty when the pair is not offered)."""
    return SUPPORTED.get((runtime, precision), ())


def combination_problem(runtime: str, precision: str, device: str | None = None) -> str | None:
    """Why a runtime/precision/device combination is not offered, or None when it is."""
    devices = supported_devices(runtime, precision)
    if not devices:
        offered = ", ".join(p for (r, p) in SUPPORTED if r == runtime)
        return f"--runtime {runtime} offers --precision {offered}, not {precision}"
    if device is not None and device not in devices:
        hint = ""
        if precision == "fp16":
            hint = " fp16 is for GPUs; on a CPU use fp32, int8, or --runtime openvino --precision bf16."
        elif device in ("cuda", "tensorrt"):
            hint = " On an NVIDIA GPU use --runtime onnxruntime with --precision fp32 or fp16."
        return (
            f"--runtime {runtime} --precision {precision} runs on --device {' or '.join(devices)}, "
            f"not {device}.{hint}"
        )
    return None


def check_runtime(runtime: str, precision: str, device: str | None = None) -> None:
    """Refuse unknown names and combinations that are not offered, naming the valid choices."""
    if runtime not in RUNTIMES:
        raise UsageError(f"Unknown --runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown --precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    problem = combination_problem(runtime, precision, device)
    if problem:
        raise UsageError(problem)


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports in /proc/cpuinfo (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX-BF16)."""
    return any(f in cpu_flags() for f in _BF16_FLAGS)


def check_openvino_install() -> Any:
    """Import and return the ``openvino`` module, or say how to install it."""
    try:
        import openvino
    except ModuleNotFoundError as exc:
        if exc.name != "openvino":
            raise
        raise RuntimeSetupError(f"--runtime openvino needs OpenVINO, which is not installed: {OPENVINO_INSTALL_HINT}") from exc
    return openvino


class OpenVINOExtractor:
    """An OpenVINO CPU model compiled from the same verified ONNX file, in fp32 or bf16.

    ``providers`` reads back what OpenVINO compiled, e.g. ``["OpenVINO:CPU:bf16"]``.
    One synchronous request with the latency hint: a batch uses every core.
    """

    def __init__(
        self, onnx_path: str | Path, precision: str = "bf16", intra_op_threads: int = 0, verify: bool = True
    ) -> None:
        if precision not in _OV_TYPE:
            raise UsageError(f"--runtime openvino runs --precision fp32 or bf16; got {precision!r}")
        ov = check_openvino_install()
        self.path = Path(onnx_path)
        self.sidecar = verified_sidecar(self.path, verify)
        core = ov.Core()
        if precision == "bf16":
            caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if "BF16" not in caps or not cpu_has_bf16():
                raise RuntimeSetupError(
                    "--precision bf16 needs a CPU with bf16 instructions (AVX512_BF16 or AMX-BF16); this one "
                    f"reports {', '.join(caps)} and OpenVINO would compute in fp32 without saying so. "
                    "Use --runtime openvino --precision fp32, or onnxruntime."
                )
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _OV_TYPE[precision], "PERFORMANCE_HINT": "LATENCY"}
        if intra_op_threads > 0:
            config["INFERENCE_NUM_THREADS"] = int(intra_op_threads)
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        if got != _OV_TYPE[precision]:
            raise RuntimeSetupError(
                f"asked OpenVINO for {precision} but it compiled the model for {got}; "
                "this CPU or OpenVINO build cannot run that precision. Use --precision fp32."
            )
        self.precision = precision
        self.device = "cpu"
        self.providers: list[str] = [f"OpenVINO:CPU:{got}"]
        self.version = ov.__version__
        self.request = self.compiled.create_infer_request()
        self.input_size = tuple(self.sidecar["input"]["shape"][1:3])
        self.embedding_size = int(self.sidecar["output"]["shape"][1])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Embed a uint8 batch (N, H, W, 3); returns float32 (N, D)."""
        check_image_batch(images, self.input_size)
        self.request.infer({0: np.ascontiguousarray(images)})
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)


def make_extractor(
    exported: ExportedModel,
    runtime: str = DEFAULT_RUNTIME,
    precision: str = DEFAULT_PRECISION,
    device: str = "cpu",
    intra_op_threads: int = 0,
    *,
    model_path: str | Path | None = None,
) -> Embedder:
    """Build the session that embeds images for this runtime, precision and device.

    ``intra_op_threads`` caps the session's threads (0: the runtime's default, one
    per physical core); a single-threaded Dask worker uses 1. ``model_path``
    names the int8 variant to run (default: the backbone's only registered one).
    """
    check_runtime(runtime, precision, device)
    if runtime == "openvino":
        return OpenVINOExtractor(exported.path, precision, intra_op_threads)
    if precision == "fp32":
        return Extractor(exported.path, device=device, intra_op_threads=intra_op_threads)
    if precision == "int8":
        if model_path is not None:
            variant = quantize.load_variant(Path(model_path), exported)
            if variant is None or variant.precision != "int8":
                raise IntegrityError(
                    f"{model_path} is not a registered int8 variant of {exported.path.name} "
                    "(missing, or its sidecar names another source model); make it with `xrayfx extract "
                    "--precision int8 --calibration DATA`"
                )
        else:
            variant = quantize.resolve_int8(exported)
    else:  # fp16, on cuda/tensorrt only (checked above)
        variant = quantize.ensure_fp16(exported)
    return Extractor(variant.path, device=device, intra_op_threads=intra_op_threads)
