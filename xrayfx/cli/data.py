"""`xrayfx data`: turn public chest-radiograph sets into manifests, and draw the paper's data set."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from xrayfx.cli.options import NormalSourceName
from xrayfx.exceptions import UsageError
from xrayfx.data.sources import (
    COHEN_FRONTAL_VIEWS,
    PAPER_N_COVID,
    PAPER_N_NORMAL,
    SOURCES,
    ReaderResult,
    Row,
    compose_paper,
    composition_counts,
    confounding_warnings,
    find_duplicate_files,
    find_label_conflicts,
    load_manifest_rows,
    read_cohen,
    read_kermany,
    read_nih,
    write_manifest,
)
from xrayfx.data.sources.paper import default_n_normal, normal_sources

data_app = typer.Typer(
    help="Turn each public source's own layout into an xrayfx manifest; draw the paper's data set.",
    no_args_is_help=True,
)

#: How many missing names are printed unless --list-missing.
_MISSING_SHOWN = 20

OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Manifest CSV to write.", dir_okay=False)]
HashOpt = Annotated[bool, typer.Option(
    "--hash/--no-hash",
    help="Look for byte-identical files (hashes only files of equal size).",
)]
ListMissingOpt = Annotated[bool, typer.Option(
    "--list-missing", help=f"Print every missing file name, not only the first {_MISSING_SHOWN}.",
)]


def _consoles() -> tuple[Console, Console]:
    from xrayfx.cli import console, err_console

    return console, err_console


def _print_plain(text: str, *, err: bool = False, style: str | None = None) -> None:
    out, err_out = _consoles()
    (err_out if err else out).print(text, style=style, markup=False, highlight=False, soft_wrap=True)


def _counts_table(rows: list[Row], title: str) -> Table:
    """Images and patients per label, and images per label × view and label × source."""
    counts = composition_counts(rows)
    table = Table(title=title, title_justify="left")
    for col in ("label", "images", "patients", "by view", "by source", "by age group"):
        table.add_column(col, justify="right" if col in ("images", "patients") else "left")

    def breakdown(key: str, label: str) -> str:
        parts = sorted(((v, n) for (lab, v), n in counts[key].items() if lab == label),
                       key=lambda t: (-t[1], t[0]))
        return ", ".join(f"{v or '(blank)'} {n}" for v, n in parts)

    for label, n in sorted(counts["label"].items(), key=lambda t: (-t[1], t[0])):
        table.add_row(label, str(n), str(counts["patients"][label]), breakdown("label_view", label),
                      breakdown("label_source", label), breakdown("label_age_group", label))
    table.add_row("total", str(len(rows)), str(sum(counts["patients"].values())), "", "", "")
    return table


def _report_checks(rows: list[Row], hash_check: bool) -> None:
    """Print identical files and patients with several labels."""
    out, _ = _consoles()
    if hash_check:
        groups = find_duplicate_files(rows)
        if groups:
            _print_plain(f"warning: {len(groups)} group(s) of identical files "
                         f"({sum(len(g.paths) for g in groups)} rows):", err=True, style="yellow")
            for g in groups:
                kind = "same path listed twice or more" if g.repeated_path else (
                    "across sources" if g.cross_source else "same source")
                _print_plain(f"  sha256 {g.sha256[:12]} ({kind}):", err=True)
                for path, src, pid, lab in zip(g.paths, g.sources, g.patient_ids, g.labels):
                    _print_plain(f"    {path}  [{src} {pid} {lab}]", err=True)
        else:
            out.print("duplicates: no identical files")
    else:
        out.print("duplicates: not checked (--no-hash)")
    conflicts = find_label_conflicts(rows)
    if conflicts:
        _print_plain(f"warning: {len(conflicts)} patient(s) with images of different labels "
                     "(split by patient keeps them on one side, but check the labels):",
                     err=True, style="yellow")
        for c in conflicts:
            _print_plain(f"  {c.patient_id}: " + ", ".join(f"{lab} {n}" for lab, n in c.labels), err=True)
    else:
        out.print("label conflicts: none (every patient has one label)")


def _report_reader(result: ReaderResult, output: Path | None, *, list_missing: bool) -> None:
    out, _ = _consoles()
    if output is not None:
        out.print(f"wrote {len(result.rows)} rows ({result.source}) to {output}", highlight=False)
    out.print(_counts_table(result.rows, f"{result.source}: images by label"))
    if result.dropped:
        table = Table(title="left out on purpose", title_justify="left")
        table.add_column("reason")
        table.add_column("entries", justify="right")
        for reason, n in result.dropped.items():
            table.add_row(reason, str(n))
        out.print(table)
    if result.missing:
        _print_plain(f"warning: {len(result.missing)} file(s) named by the {result.source} index are "
                     "missing on disk and were left out:", err=True, style="yellow")
        shown = result.missing if list_missing else result.missing[:_MISSING_SHOWN]
        for name in shown:
            _print_plain(f"  {name}", err=True)
        if len(shown) < len(result.missing):
            _print_plain(f"  … and {len(result.missing) - len(shown)} more (--list-missing prints all)",
                         err=True)
    else:
        out.print("missing files: none")
    if result.problems:
        _print_plain(f"warning: {len(result.problems)} entr(y/ies) could not be interpreted:",
                     err=True, style="yellow")
        for line in result.problems:
            _print_plain(f"  {line}", err=True)


def _parse_views(text: str) -> list[str]:
    views = [v.strip() for v in text.split(",") if v.strip()]
    if not views:
        raise UsageError(
            f"expected --views as a comma-separated list such as 'PA,AP,AP Supine', got {text!r}; "
            "fix: name at least one view"
        )
    return views


@data_app.command(
    "cohen",
    epilog="Example: xrayfx data cohen covid-chestxray-dataset -o cohen.csv --views 'PA,AP'",
)
def cohen_command(
    directory: Annotated[Path, typer.Argument(help="Checkout of ieee8023/covid-chestxray-dataset.")],
    output: OutputOpt,
    metadata: Annotated[Optional[Path], typer.Option(
        "--metadata", help="metadata.csv to use instead of DIRECTORY/metadata.csv.")] = None,
    views: Annotated[str, typer.Option(
        "--views", help="Comma-separated views to keep.")] = ",".join(COHEN_FRONTAL_VIEWS),
    keep_other: Annotated[bool, typer.Option(
        "--keep-other", help="Keep findings other than COVID-19 and No Finding, labelled by finding.")] = False,
    hash_check: HashOpt = True,
    list_missing: ListMissingOpt = False,
) -> None:
    """Manifest of the Cohen COVID-19 image data collection.

    Keeps X-ray rows of metadata.csv with a frontal view (PA, AP, AP Supine).

    COVID-19 findings become covid, No Finding becomes normal; rows whose image is missing are listed.

    Patient ids are cohen-<patientid>.
    """
    result = read_cohen(directory, metadata=metadata, views=_parse_views(views), keep_other=keep_other)
    write_manifest(result.rows, output)
    _report_reader(result, output, list_missing=list_missing)
    _report_checks(result.rows, hash_check)


@data_app.command("kermany", epilog="Example: xrayfx data kermany chest_xray -o kermany.csv")
def kermany_command(
    directory: Annotated[Path, typer.Argument(
        help="Folder holding train/test/val (or the chest_xray folder above it).")],
    output: OutputOpt,
    hash_check: HashOpt = True,
    list_missing: ListMissingOpt = False,
) -> None:
    """Manifest of Kermany/Mooney Chest X-Ray Images (Pneumonia).

    Label from the NORMAL/PNEUMONIA folder (bacterial/viral in the pneumonia_type column).

    Patient from the file name (IM-0115-0001.jpeg → mooney-IM-0115); age group pediatric.

    The original train/test/val folder goes to the split column.
    """
    result = read_kermany(directory)
    write_manifest(result.rows, output)
    _report_reader(result, output, list_missing=list_missing)
    _report_checks(result.rows, hash_check)


@data_app.command("nih", epilog="Example: xrayfx data nih ChestX-ray14 -o nih.csv")
def nih_command(
    directory: Annotated[Path, typer.Argument(help="Folder with Data_Entry_2017.csv and the image folders.")],
    output: OutputOpt,
    index: Annotated[Optional[Path], typer.Option(
        "--index", help="Index CSV to use instead of DIRECTORY/Data_Entry_2017.csv.")] = None,
    keep_other: Annotated[bool, typer.Option(
        "--keep-other", help="Keep images with findings, labelled by their findings.")] = False,
    hash_check: HashOpt = True,
    list_missing: ListMissingOpt = False,
) -> None:
    """Manifest of NIH ChestX-ray14.

    No Finding becomes normal; other findings are dropped unless --keep-other.

    Images are found in any subfolder; age group from Patient Age (under 18 → pediatric).

    Patient ids are nih-<8-digit Patient ID>.
    """
    result = read_nih(directory, keep_other=keep_other, index=index)
    write_manifest(result.rows, output)
    _report_reader(result, output, list_missing=list_missing)
    _report_checks(result.rows, hash_check)


def _rows_from_folders(cohen: Path | None, kermany: Path | None, nih: Path | None,
                       cohen_metadata: Path | None, sources: tuple[str, ...]) -> list[Row]:
    if cohen is None:
        raise UsageError(
            "expected --cohen DIR (the COVID images) when no --manifest is given, got none; "
            "fix: pass --manifest FILE, or --cohen DIR with --kermany DIR and/or --nih DIR"
        )
    if "mooney" in sources and kermany is None:
        raise UsageError(
            "expected --kermany DIR for --normal-source kermany, got none; "
            "fix: pass --kermany DIR or choose --normal-source nih / nih+cohen with --nih DIR"
        )
    if "nih" in sources and nih is None:
        raise UsageError(
            "expected --nih DIR for --normal-source nih or nih+cohen, got none; "
            "fix: pass --nih DIR or use --normal-source kermany with --kermany DIR"
        )
    rows: list[Row] = []
    for name, folder, read in (
        ("cohen", cohen, lambda d: read_cohen(d, metadata=cohen_metadata)),
        ("kermany", kermany, read_kermany),
        ("nih", nih, read_nih),
    ):
        if folder is None:
            continue
        result = read(folder)
        _report_reader(result, None, list_missing=False)
        rows.extend(result.rows)
    return rows


@data_app.command(
    "paper",
    epilog="Example: xrayfx data paper --manifest ../shared/data/cxr/manifest.csv --seed 0 -o paper.csv",
)
def paper_command(
    output: OutputOpt,
    manifest: Annotated[Optional[Path], typer.Option(
        "--manifest", help="Draw from this manifest (mooney rows are the paper's normals).")] = None,
    cohen: Annotated[Optional[Path], typer.Option("--cohen", help="Cohen repository folder.")] = None,
    kermany: Annotated[Optional[Path], typer.Option("--kermany", help="Kermany/Mooney folder.")] = None,
    nih: Annotated[Optional[Path], typer.Option("--nih", help="NIH ChestX-ray14 folder.")] = None,
    cohen_metadata: Annotated[Optional[Path], typer.Option(
        "--cohen-metadata", help="metadata.csv to use instead of the one in --cohen.")] = None,
    n_covid: Annotated[int, typer.Option("--n-covid", help="COVID images to draw.")] = PAPER_N_COVID,
    n_normal: Annotated[Optional[int], typer.Option(
        "--n-normal", help=f"Normal images to draw (default: {PAPER_N_NORMAL} from kermany, all available from nih "
                           "or nih+cohen).", show_default=False)] = None,
    normal_source: Annotated[NormalSourceName, typer.Option(
        "--normal-source", help="kermany (alias mooney; the paper's), nih, or nih+cohen (adult control).",
    )] = "kermany",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the patient order.")] = 0,
    hash_check: HashOpt = True,
) -> None:
    """The paper's data set: 140 COVID-19 and 939 normal radiographs, drawn reproducibly.

    COVID images are taken patient by patient in a seeded order, all PA before AP, all AP before AP Supine.

    Normals are taken patient by patient, in the same seeded order, from the chosen source.

    Without --n-normal: the paper's 939 from kermany, every available normal from nih or nih+cohen.

    Give either --manifest FILE or --cohen DIR with --kermany DIR and/or --nih DIR.
    """
    sources = normal_sources(normal_source)
    folders_given = any(v is not None for v in (cohen, kermany, nih, cohen_metadata))
    if manifest is not None and folders_given:
        raise UsageError(
            "expected either --manifest or source folders (--cohen, --kermany, --nih), got both; "
            "fix: drop one of them"
        )
    if manifest is not None:
        rows = load_manifest_rows(manifest)
    elif folders_given:
        rows = _rows_from_folders(cohen, kermany, nih, cohen_metadata, sources)
    else:
        raise UsageError(
            "expected --manifest FILE or --cohen DIR with --kermany DIR / --nih DIR, got neither; "
            "fix: for example --manifest ../shared/data/cxr/manifest.csv"
        )
    n_drawn = n_normal if n_normal is not None else default_n_normal(normal_source)
    comp = compose_paper(rows, n_covid=n_covid, n_normal=n_drawn, normal_source=normal_source, seed=seed)
    write_manifest(comp.rows, output)
    out, _ = _consoles()
    if n_drawn is None:
        out.print(f"took all {len(comp.normal)} available normal images from {'+'.join(sources)} "
                  "(no --n-normal given; pass --n-normal N to draw fewer)", highlight=False)
    out.print(f"wrote {len(comp.rows)} rows to {output} (seed {seed}, normal source {comp.normal_source}: "
              f"{', '.join(sources)}; drawn from {comp.available_covid} covid and "
              f"{comp.available_normal} eligible normal images)", highlight=False)
    out.print(_counts_table(comp.rows, "paper composition"))
    views = Counter(r.get("view", "") for r in comp.covid)
    out.print("covid views taken: " + ", ".join(f"{v or '(blank)'} {n}" for v, n in views.most_common()),
              highlight=False)
    for line in confounding_warnings(comp.rows):
        _print_plain(f"warning: {line}", err=True, style="yellow")
    _report_checks(comp.rows, hash_check)


@data_app.command("sources", epilog="Example: xrayfx data sources")
def sources_command() -> None:
    """Where each supported source is published, its license, what to cite and how to fetch it.

    xrayfx downloads none of them (Kaggle and the NIH host need accounts or manual steps).

    The commands shown are for you to run.
    """
    out, _ = _consoles()
    out.print("xrayfx does not download these sets: Kaggle needs an account and an API token, the NIH "
              "set is served from a Box folder, and the Cohen images carry per-image licenses. "
              "The commands under each source are for you to run.", highlight=False)
    for info in SOURCES:
        table = Table(title=f"{info.key}: {info.title}", title_justify="left", show_header=False,
                      show_lines=True)
        table.add_column("field", no_wrap=True, style="bold")
        table.add_column("value", overflow="fold")
        table.add_row("published at", info.url)
        table.add_row("license", info.license)
        table.add_row("cite", info.citation)
        table.add_row("expects", info.layout)
        table.add_row("manifest", f"source = {info.manifest_source}")
        if info.notes:
            table.add_row("note", info.notes)
        out.print()
        out.print(table)
        out.print("get it:", highlight=False)
        for cmd in info.commands:
            _print_plain(f"  {cmd}")


def register(app: typer.Typer) -> None:
    """Add the `data` command group to the xrayfx app."""
    app.add_typer(data_app, name="data", help="Source data sets → manifests; the paper's composition.")
