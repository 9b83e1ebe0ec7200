"""`xrayfx report`: Table 2 beside the paper, with intervals, extra metrics, figures and a shortcut audit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from xrayfx.cli.options import cache_dir_callback


def report_cmd(
    runs: Annotated[
        list[str],
        typer.Argument(help="Run folders, or run ids under <cache-dir>/runs (one per backbone to compare them).",
                       show_default=False),
    ],
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Output folder (default: RUN/report for one run, "
                     "<cache-dir>/reports/<timestamp> for several).", file_okay=False),
    ] = None,
    ablation: Annotated[
        bool,
        typer.Option("--ablation/--no-ablation",
                     help="Run the masked-lung ablation (re-embeds every test image with the lungs masked)."),
    ] = True,
    cache_dir: Annotated[
        Optional[Path],
        typer.Option("--cache-dir", help="Cache folder with the runs, models and embeddings (default: the one "
                     "the first run folder sits in, else ./cache).", file_okay=False, callback=cache_dir_callback),
    ] = None,
    resamples: Annotated[
        int, typer.Option("--resamples", help="Patient-bootstrap resamples behind each AUROC, PR-AUC and F1 "
                          "interval (at least 100).")
    ] = 2000,
    explain: Annotated[
        int, typer.Option("--explain", help="Test images per class given occlusion maps in the section 'Where the "
                          "decision comes from' (seeded sample; 0 turns it off).")
    ] = 16,
) -> None:
    """Write report.md, a self-contained report.html and report.json for one run or several.

    Table 2 as in the paper (argmax decision) with the paper's numbers and the
    differences beside ours; AUROC, PR-AUC, sensitivity, specificity, PPV, NPV,
    a second table at a threshold chosen on the validation images, 95 %
    intervals on everything, calibration, figures, and a shortcut audit
    (metrics by source/view/age, confounding warnings, source probe,
    masked-lung ablation).

    Example: xrayfx report cache/runs/20250101-120000-mobilenet-logreg
    """
    from xrayfx.cli import console, err_console
    from xrayfx.report import build_report
    from xrayfx.report.cells import with_ci
    from xrayfx.report.render import terminal_table2

    def log(message: str) -> None:
        err_console.print(message, highlight=False, soft_wrap=True, markup=False)

    result = build_report(runs, out=out, ablation=ablation, cache_dir=cache_dir, n_resamples=resamples, log=log,
                          explain=explain)
    data = result.data
    headers, rows = terminal_table2(data)
    table = Table(title="Table 2 — test images, argmax decision: ours (95 % interval); the paper's value, "
                  "Δ = ours − paper", title_justify="left", show_lines=True)
    for h in headers:
        table.add_column(h, justify="left" if h == "backbone" else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for e in data["runs"]:
        rk = e["scores"]["ranking"]
        auc = with_ci(rk.get("auroc"), 3) if rk.get("auroc") else "n/a"
        console.print(
            f"{e['run']['backbone']} / {e['run']['head']} ({e['run']['run_id']}): AUROC {auc}, "
            f"PR-AUC {with_ci(rk.get('pr_auc'), 3) if rk.get('pr_auc') else 'n/a'} "
            f"[{data['n_resamples']} patient-bootstrap resamples]",
            highlight=False, markup=False,
        )
        for w in e["audit"]["warnings"]:
            console.print(f"  AUDIT: {w}", style="bold yellow", highlight=False, markup=False, soft_wrap=True)
        if not e["audit"]["warnings"]:
            console.print("  audit: no warning", highlight=False, markup=False)
    console.print(f"report: {result.markdown}", highlight=False, markup=False)
    console.print(f"        {result.html}", highlight=False, markup=False)
    console.print(f"        {result.json}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add the `report` command to the xrayfx app."""
    app.command("report", epilog="Example: xrayfx report cache/runs/RUN-ID --out report")(report_cmd)
