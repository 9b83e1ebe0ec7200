"""onnxruntime sessions over exported backbones: the frozen feature extractor."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from xrayfx.exceptions import IntegrityError, RuntimeSetupError, UsageError
from xrayfx.models.config import has_external_data, sidecar_path
from xrayfx.util import read_json, verify_sha256

DEVICES = ("cpu", "cuda", "tensorrt", "auto")
PROVIDER_OF = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
GPU_SWAP_HINT = (
    "GPU inference needs onnxruntime-gpu instead of onnxruntime: "
    "`pip uninstall -y onnxruntime && pip install onnxruntime-gpu==1.31.1` (CUDA 13 + cuDNN 9)"
)


def check_onnxruntime_install() -> None:
    """Refuse to run when both the CPU and GPU onnxruntime distributions are installed.

    Both install the same ``onnxruntime`` module, so whichever was installed last
    silently wins and the other is half-overwritten.
    """
    present = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            present.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    if len(present) > 1:
        raise RuntimeSetupError(
            f"both {present[0]} and {present[1]} are installed; they overwrite the same `onnxruntime` module. "
            "Keep one: `pip uninstall -y onnxruntime onnxruntime-gpu` then "
            "`pip install onnxruntime-gpu==1.31.1` (GPU) or `pip install onnxruntime` (CPU)."
        )
    if not present:
        raise RuntimeSetupError("onnxruntime is not installed: `pip install onnxruntime`")


def providers_for(device: str) -> list[str]:
    """The execution providers to ask for, most preferred first (CPU always last as a fallback)."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise UsageError(f"Unknown --device {device!r}; choose one of: {', '.join(DEVICES)}")
    available = ort.get_available_providers()
    if device == "auto":
        return [p for p in (PROVIDER_OF["tensorrt"], PROVIDER_OF["cuda"], PROVIDER_OF["cpu"]) if p in available]
    wanted = PROVIDER_OF[device]
    if wanted not in available:
        raise RuntimeSetupError(
            f"--device {device} needs {wanted}, but this onnxruntime offers only {', '.join(available)}. "
            + (GPU_SWAP_HINT if device != "cpu" else "")
        )
    chain = [wanted]
    if device == "tensorrt":
        chain.append(PROVIDER_OF["cuda"])
    return chain + ([PROVIDER_OF["cpu"]] if wanted != PROVIDER_OF["cpu"] else [])


def verified_sidecar(onnx_path: Path, verify: bool = True) -> dict[str, Any]:
    """The sidecar record of an exported ONNX file; with ``verify``, the file's sha256 checked against it.

    The one check every session runs before loading a model (IntegrityError when it fails).
    """
    side = sidecar_path(onnx_path)
    if not side.is_file():
        raise IntegrityError(f"{onnx_path} has no sidecar {side.name}; re-export with `xrayfx export`")
    sidecar: dict[str, Any] = read_json(side)
    if verify:
        verify_sha256(onnx_path, sidecar["onnx_sha256"], what="ONNX model")
        if has_external_data(onnx_path):
            raise IntegrityError(
                f"{onnx_path} refers to external weight data; xrayfx loads only self-contained ONNX files"
            )
    return sidecar


def check_image_batch(images: np.ndarray, input_size: tuple[int, ...]) -> None:
    """UsageError unless ``images`` is a uint8 batch (N, H, W, 3) at the model's input size."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (*input_size, 3):
        raise UsageError(
            f"extractor expects uint8 images of shape (N, {input_size[0]}, {input_size[1]}, 3); "
            f"got {images.dtype} {images.shape}"
        )


class Extractor:
    """A verified onnxruntime session that maps uint8 NHWC images to float32 embeddings."""

    def __init__(
        self,
        onnx_path: str | Path,
        device: str = "cpu",
        intra_op_threads: int = 0,
        verify: bool = True,
    ) -> None:
        check_onnxruntime_install()
        import onnxruntime as ort

        self.path = Path(onnx_path)
        self.sidecar: dict[str, Any] = verified_sidecar(self.path, verify)
        self.device = device
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        asked = providers_for(device)
        self.session = ort.InferenceSession(str(self.path), options, providers=asked)
        self.providers: list[str] = self.session.get_providers()
        if device != "auto" and asked[0] not in self.providers:
            # onnxruntime falls back to CPU silently when CUDA/cuDNN libraries are missing.
            raise RuntimeSetupError(
                f"--device {device} asked for {asked[0]}, but the session runs on {', '.join(self.providers)}: "
                "the GPU libraries (CUDA 13, cuDNN 9) were not found or failed to load. "
                "Check `nvidia-smi` and LD_LIBRARY_PATH, or use --device cpu."
            )
        self.input_name = self.sidecar["input"]["name"]
        self.output_name = self.sidecar["output"]["name"]
        self.embedding_size = int(self.sidecar["output"]["shape"][1])
        self.input_size = tuple(self.sidecar["input"]["shape"][1:3])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Embed a uint8 batch (N, H, W, 3); returns float32 (N, D)."""
        check_image_batch(images, self.input_size)
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(images)})[0]
        return np.asarray(out, dtype=np.float32)

