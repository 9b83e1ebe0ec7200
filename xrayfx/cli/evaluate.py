"""`xrayfx evaluate`: score a labelled folder or manifest with a finished run (external validation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from xrayfx.cli.options import Device


def _log(message: str) -> None:
    from xrayfx.cli import err_console

    err_console.print(message, highlight=False, soft_wrap=True, markup=False)


def evaluate_cmd(
    run: Annotated[str, typer.Option("--run", help="A run folder, or a run id under CACHE/runs.")],
    data: Annotated[Path, typer.Option(
        "--data", help="Labelled images: a manifest CSV (path,label[,patient_id,source,...]) or a folder of "
                       "class subfolders.")],
    name: Annotated[Optional[str], typer.Option(
        "--name", help="Evaluation folder name under RUN/evaluations (default: the data's stem).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing evaluation of that name.")] = False,
    keep_overlap: Annotated[bool, typer.Option(
        "--keep-overlap", help="Keep rows that overlap the run's training/validation data in the metrics.")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option(
        "--cache-dir", help="Cache folder holding runs/ and the embeddings (default: the run's, else ./cache).")]
    = None,
    device: Device = "cpu",
) -> None:
    """Score labelled data (e.g. another hospital) with a run's backbone, head and recorded threshold.

    Writes RUN/evaluations/NAME/predictions.csv and metrics.json (AUROC with patient-bootstrap CI, sensitivity, specificity, PPV, NPV at the run's threshold, per source). Rows that share bytes or a patient with the run's training/validation data are listed and left out of the metrics. `xrayfx report RUN` then shows them beside the internal test.

    Example: xrayfx evaluate --run cache/runs/20250101-120000-mobilenet-logreg --data other-hospital.csv
    """
    from xrayfx.cli import console
    from xrayfx.study.evaluate import evaluate

    result = evaluate(run, data, name=name, force=force, keep_overlap=keep_overlap, cache_dir=cache_dir,
                      device=device, progress=True, log=_log)
    m = result.metrics

    def num(key: str) -> str:
        v, ci = m.get(key), m.get(f"{key}_ci")
        return "undefined" if v is None else f"{v:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")

    console.print(f"{result.path}: n {m['n']} ({m['n_patients']} patients), threshold {m['threshold']:.4g}",
                  highlight=False)
    for key in ("auroc", "sensitivity", "specificity", "ppv", "npv"):
        console.print(f"  {key} {num(key)}", highlight=False)
    for note in m["notes"]:
        console.print(f"  note: {note}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `evaluate` to the xrayfx app."""
    app.command("evaluate")(evaluate_cmd)
