"""Lower-precision variants of an exported backbone: static int8 (QDQ) for CPUs, fp16 for GPUs.

Each variant is derived from the fp32 export once and registered next to it in
``<cache>/models/`` with its own JSON sidecar (sha256 of the variant file, sha256
of the fp32 file it came from, how it was made, versions), exactly like the
export itself; extractors verify that hash on load.

int8: static QDQ, the way it stays faster than fp32
---------------------------------------------------
* **Static**, not dynamic: dynamic int8 quantises activations at run time and was
  measured at 0.2–0.65× of fp32 speed on the paper backbones; it is not offered.
* The fp32 graph is first optimised by onnxruntime (``quant_pre_process``), which
  folds each BatchNormalization into its convolution. Without that step the
  per-tensor activation ranges see the unfolded, per-channel-scaled conv outputs,
  and the embedding of MobileNet falls to a cosine similarity of ~0.3 to fp32.
* Weights int8, symmetric, **per output channel**; activations uint8 asymmetric,
  one range per tensor (what onnxruntime's QLinearConv takes), QDQ format so the
  graph stays a plain ONNX graph that onnxruntime fuses into integer kernels.
* **Bias correction** (:mod:`xrayfx.models.bias_correction`): each Conv bias is
  corrected for the mean shift its weights' int8 rounding causes. Without it
  MobileNet's int8 embedding had cosine 0.94 to fp32 and Lite0's 0.97 (issue 14;
  the error is in the weights, not the activation ranges: 16-bit activations did
  not help, 16-bit weights did). The recipe (:class:`Int8Recipe`) is recorded in
  the sidecar and hashed into the variant's file name and cache group.
* Ranges come from **real radiographs** (64 by default, at most :data:`MAX_CALIBRATION_IMAGES`),
  by min/max. The calibration session computes every intermediate tensor of a
  batch at once (about 0.6 GB per image for DenseNet201), so batches are small
  (:data:`CALIBRATION_BATCH`) and ranges are merged after every batch
  (``CalibStridedMinMax=1``): memory holds one batch, and every image counts.
  onnxruntime 1.32's ``CalibMaxIntermediateOutputs``, which looks like the limit,
  clears the batches it kept *without* folding them into the ranges (most
  calibration images would be silently ignored); it is not used.

Which calibration images
------------------------
A variant is identified by the fp32 model and the sha256 of its calibration
image ids (in order), so two calibration sets give two files and two cache
groups (``precision`` tag ``int8-<hash12>``), never a mix. ``xrayfx extract
--precision int8`` takes ``--calibration MANIFEST_OR_FOLDER``; without it, it
reuses the backbone's int8 model if exactly one is registered, and otherwise
calibrates on the first 64 decodable images of the data being extracted
(:func:`ensure_int8`).

fp16
----
Converted with ``onnxconverter-common`` (the optional ``fp16`` extra), keeping
the uint8 input and float32 output; the input Cast stays fp32 and is followed by
a cast to fp16. Meant for CUDA/TensorRT; :mod:`xrayfx.inference.runtimes` refuses it on CPU.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
import warnings
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xrayfx.data.stream import decoded_stream
from xrayfx.data.manifest import Dataset, load_dataset
from xrayfx.exceptions import IntegrityError, RuntimeSetupError, UsageError
from xrayfx.data.images import load_image
from xrayfx.models.config import ExportedModel, sidecar_path
from xrayfx.util import atomic_write_json, library_versions, read_json, sha256_file, sha256_json, verify_sha256
from xrayfx.models.bias_correction import correct_biases

#: Most radiographs a calibration may use (256 was measured: no gain over 64 for min/max ranges).
MAX_CALIBRATION_IMAGES = 256
#: Radiographs a calibration uses by default.
DEFAULT_CALIBRATION_IMAGES = 64
#: Images per calibration batch: ranges are merged after each one. The calibration
#: session holds every intermediate tensor of a batch at once (about 0.6 GB per image
#: for DenseNet201: 4.9 GB at batch 8, 1.4 GB at batch 2), so the batch sets the memory.
CALIBRATION_BATCH = 4
#: Settings of the int8 variant, recorded in its sidecar.
INT8_SETTINGS: dict[str, Any] = {
    "format": "QDQ",
    "weights": "int8 symmetric, per output channel",
    "activations": "uint8 asymmetric, per tensor",
    "calibration": "MinMax, merged after every batch (CalibStridedMinMax=1)",
    "pre_process": "onnxruntime quant_pre_process (graph optimisation, BatchNorm folded into Conv)",
    "bias_correction": "Conv biases corrected for the weights' int8 rounding (xrayfx.models.bias_correction)",
}
#: Node kinds an int8 recipe may keep in float (``Int8Recipe.keep_float``).
FLOAT_NODE_KINDS = ("first-conv", "depthwise", "last-conv")


@dataclass(frozen=True)
class Int8Recipe:
    """How an int8 variant is made; its settings go into the sidecar and the variant's name.

    The default is the recipe measured best on the real-weight backbones in
    issue 14 (benchmarks/RESULTS.md): MinMax ranges from 64 radiographs,
    per-channel weights, full int8 range, every node quantised, and **bias
    correction**, which is what keeps MobileNet's and Lite0's embeddings.
    """

    method: str = "MinMax"  # MinMax | Entropy | Percentile
    per_channel: bool = True
    reduce_range: bool = False
    bias_correction: bool = True
    keep_float: tuple[str, ...] = ()  # of FLOAT_NODE_KINDS

    def settings(self) -> dict[str, Any]:
        """The recipe as JSON (recorded in the sidecar and hashed into the variant's id)."""
        return {"method": self.method, "per_channel": self.per_channel, "reduce_range": self.reduce_range,
                "bias_correction": self.bias_correction, "keep_float": list(self.keep_float)}

    def check(self) -> None:
        """Raise UsageError for an unknown calibration method or node kind."""
        if self.method not in ("MinMax", "Entropy", "Percentile"):
            raise UsageError(f"int8 calibration method must be MinMax, Entropy or Percentile; got {self.method!r}")
        unknown = [k for k in self.keep_float if k not in FLOAT_NODE_KINDS]
        if unknown:
            raise UsageError(f"int8 keep_float takes {', '.join(FLOAT_NODE_KINDS)}; got {unknown!r}")


DEFAULT_INT8_RECIPE = Int8Recipe()


@dataclass(frozen=True)
class VariantModel:
    """A registered lower-precision ONNX file derived from an fp32 export."""

    path: Path
    sidecar: dict[str, Any]
    precision: str  # "int8" | "fp16"

    @property
    def cache_precision(self) -> str:
        """The precision tag of this variant's cache group ('int8-<variant id12>' or 'fp16').

        The id hashes the calibration set and the recipe, so embeddings of int8
        models made another way (an older recipe included) never share a group.
        """
        if self.precision == "int8":
            return f"int8-{int8_variant_id(self.sidecar)[:12]}"
        return self.precision


# ------------------------------------------------------------------------------------ calibration


def calibration_images(
    data: Any, prep: Any, n: int = DEFAULT_CALIBRATION_IMAGES, workers: int = 2
) -> tuple[list[str], np.ndarray]:
    """The first ``n`` decodable images of a folder, manifest or :class:`~xrayfx.data.manifest.Dataset`.

    Returns their image ids (sha256 of the file bytes, data-set order, duplicates
    once) and the preprocessed uint8 batch (n, h, w, 3). Files that do not decode
    are passed over.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_CALIBRATION_IMAGES:
        raise UsageError(f"calibration needs 1..{MAX_CALIBRATION_IMAGES} images; got n={n!r}")
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    seen: set[str] = set()
    records = []
    for r in dataset.ok:
        if r.image_id not in seen:
            seen.add(r.image_id)
            records.append(r)
    ids: list[str] = []
    images: list[np.ndarray] = []
    stream = decoded_stream(records, lambda p: load_image(p, prep), workers, lookahead=2 * workers)
    with closing(stream):
        for record, image, _reason in stream:
            if image is not None:
                ids.append(str(record.image_id))
                images.append(image)
                if len(ids) == n:
                    break
    if not ids:
        raise UsageError(
            f"no decodable image in the calibration data {dataset.source}; expected radiographs "
            "(PNG/JPEG/DICOM). Give another --calibration folder or manifest."
        )
    return ids, np.stack(images)


def calibration_hash(image_ids: Sequence[str]) -> str:
    """sha256 identifying a calibration set: its image ids, in order."""
    return sha256_json(list(image_ids))


class _BatchReader:
    """onnxruntime CalibrationDataReader over in-memory batches, with the strided-range interface."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int):
        self.input_name = input_name
        self.batches = [np.ascontiguousarray(images[i:i + batch]) for i in range(0, len(images), batch)]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}


# ------------------------------------------------------------------------------------ int8


def int8_id(ids_sha256: str, recipe: Int8Recipe) -> str:
    """sha256 naming an int8 variant: its calibration set and its recipe."""
    return sha256_json({"calibration_ids_sha256": ids_sha256, "recipe": recipe.settings()})


def int8_variant_id(sidecar: dict[str, Any]) -> str:
    """The id of a registered int8 variant (older sidecars, without a recipe: their calibration hash)."""
    return str(sidecar.get("variant_sha256") or sidecar["calibration"]["ids_sha256"])


def int8_path(exported: ExportedModel, variant_sha256: str) -> Path:
    """Where the int8 variant of an export with a given id (:func:`int8_id`) is registered."""
    return exported.path.with_name(f"{exported.path.stem}-int8-{variant_sha256[:12]}.onnx")


def fp16_path(exported: ExportedModel) -> Path:
    """Where the fp16 variant of an export is registered."""
    return exported.path.with_name(f"{exported.path.stem}-fp16.onnx")


def load_variant(path: Path, exported: ExportedModel, verify: bool = False) -> VariantModel | None:
    """The registered variant at ``path`` if its sidecar names this export as its source, else None."""
    side = sidecar_path(path)
    if not (path.is_file() and side.is_file()):
        return None
    sidecar = read_json(side)
    if sidecar.get("source_onnx_sha256") != exported.sidecar["onnx_sha256"]:
        return None
    if verify:
        verify_sha256(path, sidecar["onnx_sha256"], what=f"{sidecar.get('precision', '?')} ONNX variant")
    return VariantModel(path=path, sidecar=sidecar, precision=str(sidecar.get("precision")))


def registered_int8(exported: ExportedModel, recipe: Int8Recipe = DEFAULT_INT8_RECIPE) -> list[VariantModel]:
    """Every int8 variant of this export made with ``recipe`` (one per calibration set), oldest first."""
    found = []
    for path in sorted(exported.path.parent.glob(f"{exported.path.stem}-int8-*.onnx")):
        v = load_variant(path, exported)
        if v is not None and v.precision == "int8" and v.sidecar.get("recipe") == recipe.settings():
            found.append(v)
    return sorted(found, key=lambda v: v.sidecar.get("created", ""))


def quantize_int8(
    exported: ExportedModel,
    images: np.ndarray,
    image_ids: Sequence[str],
    *,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    recipe: Int8Recipe = DEFAULT_INT8_RECIPE,
) -> VariantModel:
    """Static QDQ int8 variant of an export, calibrated on ``images`` (registered once per set and recipe).

    ``images`` is a uint8 (n, h, w, 3) batch of real radiographs, n <= 256, with one
    image id per image; see the module docstring and :class:`Int8Recipe` for the settings.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    h, w = exported.sidecar["input"]["shape"][1:3]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, 3):
        raise UsageError(f"calibration images must be uint8 (n, {h}, {w}, 3); got {images.dtype} {images.shape}")
    if len(image_ids) != len(images):
        raise UsageError(f"expected one image id per calibration image ({len(images)}); got {len(image_ids)}")
    if not 1 <= len(images) <= MAX_CALIBRATION_IMAGES:
        raise UsageError(
            f"calibration takes 1..{MAX_CALIBRATION_IMAGES} radiographs; got {len(images)}. "
            "Pass fewer (the first 64 are plenty for min/max ranges)."
        )
    recipe.check()
    ids_sha = calibration_hash(image_ids)
    variant_sha = int8_id(ids_sha, recipe)
    out = int8_path(exported, variant_sha)
    if not force and (existing := load_variant(out, exported)) is not None:
        return existing
    verify_sha256(exported.path, exported.sidecar["onnx_sha256"], what="ONNX model")
    if log:
        log(f"quantising {exported.path.name} to int8 (static QDQ, calibrated on {len(images)} radiographs)…")
    t0 = time.perf_counter()
    rss0 = _peak_rss_mb()
    input_name = exported.sidecar["input"]["name"]
    with tempfile.TemporaryDirectory(prefix=".xrayfx-int8-", dir=out.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(exported.path), str(pre), skip_symbolic_shape=True)
        if recipe.bias_correction:
            corrected = Path(tmp) / "bias-corrected.onnx"
            correct_biases(pre, corrected, images, input_name, CALIBRATION_BATCH,
                           per_channel=recipe.per_channel, reduce_range=recipe.reduce_range)
            pre = corrected
        staged = Path(tmp) / "int8.onnx"
        quantize_static(
            str(pre),
            str(staged),
            _BatchReader(images, input_name, CALIBRATION_BATCH),
            quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, recipe.method),
            nodes_to_exclude=float_nodes(pre, recipe.keep_float),
            extra_options={"CalibStridedMinMax": 1} if recipe.method == "MinMax" else {},
        )
        sidecar = _variant_sidecar(exported, staged, out, "int8")
        sidecar["quantization"] = _recipe_description(recipe)
        sidecar["recipe"] = recipe.settings()
        sidecar["variant_sha256"] = variant_sha
        sidecar["calibration"] = {
            "n_images": len(image_ids),
            "ids_sha256": ids_sha,
            "image_ids": list(image_ids),
            "batch": CALIBRATION_BATCH,
        }
        sidecar["seconds"] = round(time.perf_counter() - t0, 2)
        sidecar["peak_rss_mb"] = round(max(_peak_rss_mb(), rss0), 1)
        os.replace(staged, out)
    atomic_write_json(sidecar_path(out), sidecar)
    return VariantModel(path=out, sidecar=sidecar, precision="int8")


def float_nodes(model_path: Path, kinds: Sequence[str]) -> list[str]:
    """Names of the Conv nodes of the given kinds (:data:`FLOAT_NODE_KINDS`) in an ONNX file."""
    if not kinds:
        return []
    import onnx

    convs = [n for n in onnx.load(str(model_path)).graph.node if n.op_type == "Conv"]
    names: list[str] = []
    if "first-conv" in kinds and convs:
        names.append(convs[0].name)
    if "last-conv" in kinds and convs:
        names.append(convs[-1].name)
    if "depthwise" in kinds:
        names += [n.name for n in convs if next((a.i for a in n.attribute if a.name == "group"), 1) > 1]
    return list(dict.fromkeys(names))


def _recipe_description(recipe: Int8Recipe) -> dict[str, Any]:
    """INT8_SETTINGS as this recipe made them (for the sidecar)."""
    out = dict(INT8_SETTINGS)
    out["weights"] = "int8 symmetric, " + ("per output channel" if recipe.per_channel else "per tensor") + (
        ", reduced range [-64, 64]" if recipe.reduce_range else "")
    if recipe.method != "MinMax":
        out["calibration"] = f"{recipe.method} (onnxruntime calibrator)"
    if not recipe.bias_correction:
        del out["bias_correction"]
    if recipe.keep_float:
        out["kept_float"] = list(recipe.keep_float)
    return out


def ensure_int8(
    exported: ExportedModel,
    calibration: str | os.PathLike[str] | None = None,
    data: Any = None,
    log: Callable[[str], None] | None = None,
) -> VariantModel:
    """The int8 variant an extraction uses, made if needed.

    * ``calibration`` (folder or manifest): its first 64 decodable images;
    * else the backbone's int8 variant, if exactly one is registered;
    * else the first 64 decodable images of ``data`` (the data being extracted).
    """
    prep = exported.config.preprocessing
    if calibration is None:
        existing = registered_int8(exported)
        if len(existing) == 1:
            return existing[0]
        if data is None:
            names = ", ".join(v.path.name for v in existing) or "none"
            raise UsageError(
                f"--precision int8 needs calibration radiographs for {exported.path.name} "
                f"(registered int8 variants: {names}); pass --calibration MANIFEST_OR_FOLDER"
            )
        source = data
    else:
        source = Path(calibration)
    ids, images = calibration_images(source, prep)
    return quantize_int8(exported, images, ids, log=log)


def resolve_int8(exported: ExportedModel) -> VariantModel:
    """The single registered int8 variant of an export (for callers that pass no model path)."""
    existing = registered_int8(exported)
    if len(existing) != 1:
        names = ", ".join(v.path.name for v in existing) or "none"
        raise UsageError(
            f"--precision int8 needs exactly one registered int8 variant of {exported.path.name}; found "
            f"{len(existing)} ({names}). Make one with `xrayfx extract --precision int8 --calibration DATA` "
            "or pass its path (model_path=)"
        )
    return existing[0]


def int8_model_of_group(exported: ExportedModel, cache_group: str | None) -> Path | None:
    """The exact int8 model a cache group (``…-int8-<calibration hash12>``) was written with, or None.

    Runs record their cache group; whoever embeds again for a run (jitter, ablation,
    predict) passes this path on, so a second registered calibration never makes
    the choice ambiguous. Raises IntegrityError when that variant is no longer registered.
    """
    marker = "-int8-"
    if not cache_group or marker not in cache_group:
        return None
    tag = cache_group.rsplit(marker, 1)[1]
    path = exported.path.with_name(f"{exported.path.stem}-int8-{tag}.onnx")
    return int8_variant_at(exported, path).path


def int8_model_of_run(exported: ExportedModel, run_config: dict[str, Any]) -> Path | None:
    """The exact int8 model a run was trained with (from its recorded cache group); None for other precisions."""
    if str(run_config.get("precision") or "fp32") != "int8":
        return None
    return int8_model_of_group(exported, run_config.get("cache_group"))


def int8_variant_at(exported: ExportedModel, path: str | os.PathLike[str]) -> VariantModel:
    """The registered int8 variant of ``exported`` at ``path``; IntegrityError if there is none."""
    variant = load_variant(Path(path), exported)
    if variant is None or variant.precision != "int8":
        raise IntegrityError(
            f"expected a registered int8 variant of {exported.path.name} at {path}; got none (missing, or its "
            "sidecar names another source model). Make it again with `xrayfx extract --precision int8 "
            "--calibration DATA` using the same calibration set"
        )
    return variant


# ------------------------------------------------------------------------------------ fp16


def ensure_fp16(exported: ExportedModel, log: Callable[[str], None] | None = None) -> VariantModel:
    """The fp16 variant of an export (uint8 in, float32 out), converted once and registered."""
    out = fp16_path(exported)
    if (existing := load_variant(out, exported)) is not None:
        return existing
    try:
        from onnxconverter_common import float16
    except ModuleNotFoundError as exc:
        raise RuntimeSetupError(
            "--precision fp16 converts the ONNX model with onnxconverter-common, which is not installed: "
            "`pip install 'xrayfx[fp16]'` (onnxconverter-common 1.16)"
        ) from exc
    import onnx

    verify_sha256(exported.path, exported.sidecar["onnx_sha256"], what="ONNX model")
    if log:
        log(f"converting {exported.path.name} to fp16…")
    t0 = time.perf_counter()
    model = onnx.load(str(exported.path))
    # The input Cast (uint8 -> float) keeps its float32 output; the converter then
    # inserts a cast to fp16 after it. Converting the Cast itself leaves its `to`
    # attribute at float32 while its output is declared fp16: an invalid graph.
    casts = [n.name for n in model.graph.node if n.op_type == "Cast"]
    with warnings.catch_warnings(record=True) as caught:
        # The converter warns once per weight it clamps into fp16's range (values below 1e-7
        # become 1e-7 in magnitude); they are counted and recorded instead of printed.
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=casts)
    clamped = sum(1 for w in caught if "truncated" in str(w.message))
    with tempfile.TemporaryDirectory(prefix=".xrayfx-fp16-", dir=out.parent) as tmp:
        staged = Path(tmp) / "fp16.onnx"
        onnx.save(converted, str(staged))
        sidecar = _variant_sidecar(exported, staged, out, "fp16")
        sidecar["conversion"] = {"tool": "onnxconverter-common float16", "keep_io_types": True, "blocked": casts,
                                 "weights_clamped_to_fp16_range": clamped}
        sidecar["seconds"] = round(time.perf_counter() - t0, 2)
        os.replace(staged, out)
    atomic_write_json(sidecar_path(out), sidecar)
    return VariantModel(path=out, sidecar=sidecar, precision="fp16")


# ------------------------------------------------------------------------------------ shared


def _variant_sidecar(exported: ExportedModel, staged: Path, out: Path, precision: str) -> dict[str, Any]:
    base = exported.sidecar
    return {
        "precision": precision,
        "backbone": base["backbone"],
        "fingerprint": base["fingerprint"],
        "onnx_file": out.name,
        "onnx_sha256": sha256_file(staged),
        "onnx_bytes": staged.stat().st_size,
        "source_onnx_file": exported.path.name,
        "source_onnx_sha256": base["onnx_sha256"],
        "input": base["input"],
        "output": base["output"],
        "preprocessing": base["preprocessing"],
        "gflops_per_image": base.get("gflops_per_image"),
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
