"""The Keras baseline of ``xrayfx bench``: the Keras backbone in a child process, driven one command at a time.

The child (``python -m xrayfx.bench_keras keras-worker``) keeps TensorFlow's memory
out of the other numbers; commands and replies are JSON lines.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from xrayfx.bench_measure import Timing
from xrayfx.exceptions import RuntimeSetupError, XrayfxError
from xrayfx.models.export import build_keras_backbone
from xrayfx.models.config import ModelConfig
from xrayfx.util import import_keras_quietly


class KerasBaseline:
    """The Keras backbone in a child process, driven one command at a time (so it interleaves)."""

    def __init__(self, config: Any):
        self._log_file = tempfile.TemporaryFile()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xrayfx.bench_keras", "keras-worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log_file, env=env, text=True, bufsize=1,
        )
        self._tmp = tempfile.TemporaryDirectory(prefix="xrayfx-bench-")
        try:
            reply = self._ask({"cmd": "load", "config": config.to_dict()})
        except BaseException:
            self.close()
            raise
        self.build_seconds = reply["seconds"]
        self.versions = reply["versions"]
        self.device = reply["device"]
        self.call = ""

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        if self.proc.poll() is not None:
            raise RuntimeSetupError(f"the Keras baseline process ended (exit code {self.proc.returncode}){self._tail()}")
        if self.proc.stdin is None or self.proc.stdout is None:
            raise RuntimeSetupError("the Keras baseline process has no pipes; this is a bug in xrayfx")
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise RuntimeSetupError(
                f"the Keras baseline process died (exit code {self.proc.returncode}) during {message['cmd']}; "
                f"if it ran out of memory, bench fewer backbones at a time{self._tail()}"
            )
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeSetupError(f"Keras baseline failed: {reply['error']}{self._tail()}")
        return reply

    def _tail(self) -> str:
        self._log_file.seek(0)
        text = self._log_file.read().decode(errors="replace")[-2000:]
        return f"; its last output:\n{text}" if text.strip() else ""

    def set_images(self, images: np.ndarray, warmup: int) -> float:
        """Hand over a uint8 batch (normalised in the child) and warm up; returns one call's seconds."""
        path = Path(self._tmp.name) / "images.npy"
        np.save(path, images, allow_pickle=False)
        reply = self._ask({"cmd": "images", "path": str(path), "warmup": warmup})
        self.call = reply["call"]
        return float(reply["seconds"])

    def time_calls(self, images: np.ndarray, calls: int, timing: Timing) -> None:
        reply = self._ask({"cmd": "run", "calls": calls})
        timing.latencies_s.extend(reply["latencies_s"])
        timing.repeat_images_per_s.append(calls * len(images) / reply["elapsed_s"])
        timing.peak_rss_mb = max(timing.peak_rss_mb, reply["peak_rss_mb"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._ask({"cmd": "quit"})
            except RuntimeSetupError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._tmp.cleanup()
        self._log_file.close()


# --------------------------------------------------------------------------------------------- Keras child


def _keras_worker() -> int:
    """Child side of :class:`KerasBaseline`: JSON commands on stdin, JSON replies on the original stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything TensorFlow prints goes to the log, not into the protocol
    state: dict[str, Any] = {}
    for line in sys.stdin:
        message = json.loads(line)
        try:
            reply = _keras_command(message, state)
        except (XrayfxError, ValueError, OSError, RuntimeError, MemoryError) as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        if message.get("cmd") == "quit":
            break
    return 0


def _keras_command(message: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    cmd = message.get("cmd")
    if cmd == "load":
        t0 = time.perf_counter()
        keras = import_keras_quietly()
        import tensorflow as tf

        config = ModelConfig.from_dict(message["config"])
        state["config"] = config
        state["model"] = build_keras_backbone(config)
        gpus = tf.config.list_physical_devices("GPU")
        return {"seconds": round(time.perf_counter() - t0, 2), "device": "gpu" if gpus else "cpu",
                "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}}
    if cmd == "images":
        config, model = state["config"], state["model"]
        x = config.preprocessing.apply(np.load(message["path"], allow_pickle=False).astype(np.float32))
        state["x"] = x
        calls = {"model(x, training=False)": lambda: model(x, training=False),
                 "predict_on_batch": lambda: model.predict_on_batch(x)}
        best, best_name = math.inf, ""
        for name, fn in calls.items():
            for _ in range(max(1, int(message.get("warmup", 2)))):
                np.asarray(fn())
            t0 = time.perf_counter()
            np.asarray(fn())
            seconds = time.perf_counter() - t0
            if seconds < best:
                best, best_name = seconds, name
        state["call"] = calls[best_name]
        return {"call": best_name, "seconds": best}
    if cmd == "run":
        fn = state["call"]
        lat = []
        t0 = time.perf_counter()
        for _ in range(int(message["calls"])):
            t = time.perf_counter()
            np.asarray(fn())
            lat.append(time.perf_counter() - t)
        return {"latencies_s": lat, "elapsed_s": time.perf_counter() - t0,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cmd == "quit":
        return {"ok": True}
    return {"error": f"unknown command {cmd!r}"}


if __name__ == "__main__":
    if sys.argv[1:] == ["keras-worker"]:
        sys.exit(_keras_worker())
    sys.exit("usage: python -m xrayfx.bench_keras keras-worker (internal: the Keras baseline of `xrayfx bench`)")
