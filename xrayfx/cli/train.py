"""`xrayfx fit-head` and `xrayfx predict`: train a head on cached embeddings; predict with a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from xrayfx.cli.options import (
    BalanceName,
    BitDepth,
    CacheDir,
    Data,
    Device,
    HeadName,
    KeepDegenerate,
    Model,
    Preprocess,
    Resize,
    Seed,
    TrainerName,
    Weights,
    cache_dir_callback,
)


def _log(message: str) -> None:
    from xrayfx.cli import err_console

    err_console.print(message, highlight=False, soft_wrap=True, markup=False)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def fit_head_cmd(
    model: Model,
    data: Data,
    weights: Weights = "imagenet",
    seed: Seed = 0,
    preprocess: Preprocess = "imagenet",
    resize: Resize = "stretch",
    cache_dir: CacheDir = Path("cache"),
    device: Device = "cpu",
    split: Annotated[Optional[Path], typer.Option(
        "--split", help="Reuse a run's split.csv (image_id,patient_id,label,fold,part; older "
        "image_id,patient_id,label,split,fold files too) instead of making one.")] = None,
    test_size: Annotated[float, typer.Option("--test-size", help="Fraction of all images in the test part.")] = 0.3,
    val_size: Annotated[float, typer.Option(
        "--val-size", help="Fraction of the remaining (training) images in the validation part.")] = 0.15,
    split_seed: Annotated[int, typer.Option("--split-seed", help="Seed of the patient-grouped split.")] = 0,
    folds: Annotated[Optional[int], typer.Option(
        "--folds", help="K-fold cross-validation with K folds (one head per fold) instead of a holdout split.")] = None,
    labels: Annotated[str, typer.Option(
        "--labels", help="Exactly two labels, comma-separated; rows with other labels are left out and counted.")]
    = "covid,normal",
    positive: Annotated[str, typer.Option(
        "--positive", help="The class that recall, AUROC and TP refer to.")] = "covid",
    head: Annotated[HeadName, typer.Option("--head", help="The head trained on the embeddings.")] = "paper",
    balance: Annotated[BalanceName, typer.Option(
        "--balance", help="How the training rows are balanced (training rows only).")] = "smote",
    k_neighbors: Annotated[int, typer.Option("--k-neighbors", help="SMOTE's k.")] = 5,
    augment: Annotated[int, typer.Option(
        "--augment", help="N random jitters per training image (fresh each epoch for the paper head).")] = 0,
    train_seed: Annotated[int, typer.Option(
        "--train-seed", help="Seed of the sampler, the head and the jitter.")] = 0,
    run_id: Annotated[Optional[str], typer.Option(
        "--run-id", help="Run folder name under CACHE/runs (default: timestamp-backbone-head).")] = None,
    allow_leakage: Annotated[bool, typer.Option(
        "--allow-leakage", help="Proceed even if a patient or an image is on both sides of the split.")] = False,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Paper head: epochs (default 100).")] = None,
    head_batch_size: Annotated[Optional[int], typer.Option(
        "--head-batch-size", help="Paper head: training batch size, in embeddings per step (8).")] = None,
    batch_size_deprecated: Annotated[Optional[int], typer.Option(
        "--batch-size", hidden=True, help="Deprecated alias of --head-batch-size.")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(
        "--learning-rate", help="Paper head: SGD learning rate (1e-4).")] = None,
    momentum: Annotated[Optional[float], typer.Option("--momentum", help="Paper head: SGD momentum (0.5).")] = None,
    dropout: Annotated[Optional[float], typer.Option(
        "--dropout", help="Paper head: dropout (default: the backbone's, see `xrayfx models`).")] = None,
    units: Annotated[Optional[int], typer.Option("--units", help="Paper head: hidden units (128).")] = None,
    keep_degenerate: KeepDegenerate = False,
    bit_depth: BitDepth = None,
    trainer: Annotated[Optional[TrainerName], typer.Option(
        "--trainer", help="Paper head: fast (NumPy, default) or reference (Keras model.fit); same math.")] = None,
) -> None:
    """Train a head on a backbone's embeddings (extracting whatever is not cached yet) and write a run.

    The run goes to CACHE/runs/RUN-ID/: config.json, split.csv, the head, history.csv, predictions.csv, metrics.json, summary.txt (every file's sha256 in config.json).

    Example: xrayfx fit-head --model mobilenet --weights ../shared/weights/mobilenet_2_5_224_tf_no_top.h5 --data paper.csv --head paper
    """
    from xrayfx.study.options import HeadOptions
    from xrayfx.study.fit import fit_head

    if batch_size_deprecated is not None:
        _log("--batch-size is deprecated for fit-head: it is the paper head's training batch; use --head-batch-size.")
    options = HeadOptions(
        head=head, epochs=epochs, batch_size=head_batch_size if head_batch_size is not None else batch_size_deprecated,
        learning_rate=learning_rate, momentum=momentum, dropout=dropout, units=units, balance=balance,
        k_neighbors=k_neighbors, augment=augment, train_seed=train_seed, trainer=trainer,
    )
    run = fit_head(
        model, data, weights=weights, seed=seed, preprocess=preprocess, resize=resize, cache_dir=cache_dir,
        split=split, test_size=test_size, val_size=val_size, split_seed=split_seed, folds=folds, labels=labels,
        positive=positive, head=options, run_id=run_id, allow_leakage=allow_leakage, device=device,
        progress=True, log=_log, keep_degenerate=keep_degenerate, bit_depth=bit_depth,
    )
    _print_run(run)


def _print_run(run: Any) -> None:
    from xrayfx.cli import console

    m = run.metrics
    table = Table(title=f"run {run.run_id}", title_justify="left")
    for col in ("part", "n", "AUROC (95% CI)", "accuracy argmax", "confusion argmax", "accuracy youden"):
        table.add_column(col)

    def row(name: str, part: dict[str, Any]) -> None:
        ci = part.get("auroc_ci") or {}
        auroc = _fmt(part.get("auroc")) + (f" ({_fmt(ci.get('lo'))}-{_fmt(ci.get('hi'))})" if ci else "")
        am = part.get("argmax", {})
        conf = am.get("confusion", {})
        table.add_row(
            name, str(part.get("n")), auroc, _fmt(am.get("accuracy")),
            " ".join(f"{k.upper()} {conf[k]}" for k in ("tp", "fp", "fn", "tn") if k in conf),
            _fmt(part.get("youden", {}).get("accuracy")),
        )

    if "folds" in m:
        for f in m["folds"]:
            row(f"fold {f['fold']} test", f["test"])
        row("pooled test", m["pooled_test"])
        a = m["across_folds"]["test_auroc"]
        console.print(table)
        console.print(f"test AUROC across folds: {_fmt(a['mean'])} ± {_fmt(a['std'])}", highlight=False)
    else:
        row("val", m.get("val", {}))
        row("test", m.get("test", {}))
        console.print(table)
    from xrayfx.study.decision import describe

    d = run.record.decision
    console.print(f"decision: {d.positive} if p_{d.positive} >= threshold, {describe(d.rule, d.threshold)}",
                  highlight=False)
    console.print(f"positive class: {m['positive']}; run folder: {run.path}", highlight=False)


def predict_cmd(
    inputs: Annotated[list[Path], typer.Argument(
        help="Image files, folders (searched recursively) or CSV manifests.", show_default=False)],
    run: Annotated[str, typer.Option("--run", help="A run folder, or a run id under CACHE/runs.")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="CSV file to write (default: standard output).", dir_okay=False)] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(
        "--cache-dir", help="Cache folder holding runs/ and the embeddings (default: the run's, else ./cache).",
        callback=cache_dir_callback)]
    = None,
    device: Device = "cpu",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --output file.")] = False,
    keep_degenerate: KeepDegenerate = False,
) -> None:
    """Predict images with a run's backbone, preprocessing, head and decision threshold.

    Writes CSV path,image_id,p_<label>...,predicted,threshold, then a manifest's other columns (label, patient_id, source, ...); paths as given. An existing --output is refused without --force. "predicted" applies the threshold that fit-head chose on validation (Youden's J); the threshold column and standard error name it.

    Example: xrayfx predict --run cache/runs/20250101-120000-mobilenet-paper images/ -o predictions.csv
    """
    from xrayfx.study.fit import predict, write_stdout

    result = predict(run, inputs, cache_dir=cache_dir, output=output, force=force, device=device,
                     progress=output is not None, log=_log, keep_degenerate=keep_degenerate)
    if output is None:
        write_stdout(result.csv_text())
    else:
        _log(f"{len(result.rows)} prediction(s) written to {output}")


def register(app: typer.Typer) -> None:
    """Add `fit-head` and `predict` to the xrayfx app."""
    app.command("fit-head")(fit_head_cmd)
    app.command("predict")(predict_cmd)
