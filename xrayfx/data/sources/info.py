"""Where each supported source is published, its license, the citation to use, how to get it.

xrayfx does not download these sets: Kaggle needs an account and an API token, the NIH set
is served from a Box folder through a browser or NIH's own script, and the Cohen collection
is a git repository whose images carry per-image licenses the user must honour.
"""

from __future__ import annotations

from dataclasses import dataclass

from xrayfx.exceptions import UsageError


@dataclass(frozen=True)
class SourceInfo:
    """One supported source.

    Attributes:
        key: the name used by ``xrayfx data <key>``.
        manifest_source: the ``source`` value its manifest rows carry.
        title, url, license, citation: what to show and cite.
        layout: what the reader expects on disk.
        commands: shell commands a user would run to fetch it (xrayfx runs none of them).
        notes: caveats.
    """

    key: str
    manifest_source: str
    title: str
    url: str
    license: str
    citation: str
    layout: str
    commands: tuple[str, ...]
    notes: str = ""


SOURCES: tuple[SourceInfo, ...] = (
    SourceInfo(
        key="cohen",
        manifest_source="cohen",
        title="COVID-19 image data collection (Cohen, Morrison, Dao)",
        url="https://github.com/ieee8023/covid-chestxray-dataset",
        license="per image, in metadata.csv's license column (CC BY, CC BY-NC-SA, CC BY-NC-ND, "
                "some blank); the metadata and code are under the repository's terms",
        citation="Cohen JP, Morrison P, Dao L. COVID-19 image data collection. arXiv:2003.11597, 2020. "
                 "https://github.com/ieee8023/covid-chestxray-dataset",
        layout="metadata.csv and images/ (CT volumes in volumes/ are ignored)",
        commands=(
            "git clone https://github.com/ieee8023/covid-chestxray-dataset",
            "# the paper's era (metadata of 2020-06-22): check out the last commit before 2020-06-23",
            'git -C covid-chestxray-dataset checkout "$(git -C covid-chestxray-dataset rev-list -n 1 '
            '--before=2020-06-23 HEAD)"',
            "xrayfx data cohen covid-chestxray-dataset -o cohen.csv",
        ),
        notes="up to 8 images per patient; many images are figure crops with arrows or letters",
    ),
    SourceInfo(
        key="kermany",
        manifest_source="mooney",
        title='Chest X-Ray Images (Pneumonia) (Kermany, Zhang, Goldbaum; Kaggle copy by P. Mooney)',
        url="https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia "
            "(original: https://data.mendeley.com/datasets/rscbjbr9sj/2)",
        license="CC BY 4.0 (Mendeley Data release)",
        citation="Kermany DS, Goldbaum M, Cai W, et al. Identifying Medical Diagnoses and Treatable "
                 "Diseases by Image-Based Deep Learning. Cell 2018;172(5):1122-1131.e9. "
                 "doi:10.1016/j.cell.2018.02.010; data: Kermany D, Zhang K, Goldbaum M. Labeled Optical "
                 "Coherence Tomography (OCT) and Chest X-Ray Images for Classification. Mendeley Data, "
                 "v2, 2018. doi:10.17632/rscbjbr9sj.2",
        layout="chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg",
        commands=(
            "# needs a Kaggle account and an API token in ~/.kaggle/kaggle.json",
            "pip install kaggle",
            "kaggle datasets download -d paultimothymooney/chest-xray-pneumonia",
            "unzip -q chest-xray-pneumonia.zip -d kermany",
            "xrayfx data kermany kermany -o kermany.csv",
        ),
        notes="children aged 1-5 (Guangzhou), anterior-posterior; the file names keep the patient",
    ),
    SourceInfo(
        key="nih",
        manifest_source="nih",
        title="NIH ChestX-ray14 (ChestX-ray8), NIH Clinical Center",
        url="https://nihcc.app.box.com/v/ChestXray-NIHCC",
        license="released by the NIH Clinical Center for unrestricted use; acknowledge the NIH Clinical "
                "Center and cite Wang et al. 2017",
        citation="Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale Chest "
                 "X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization of "
                 "Common Thorax Diseases. CVPR 2017, 2097-2106. doi:10.1109/CVPR.2017.369",
        layout="Data_Entry_2017.csv and images_001 … images_012 (images found in any subfolder)",
        commands=(
            "# in a browser: open https://nihcc.app.box.com/v/ChestXray-NIHCC, download "
            "Data_Entry_2017.csv and batch_download_zips.py (or the images/images_*.tar.gz files)",
            "python3 batch_download_zips.py",
            'mkdir -p nih && for f in images_*.tar.gz; do tar -xzf "$f" -C nih; done',
            "mv Data_Entry_2017.csv nih/",
            "# or, with a Kaggle account: kaggle datasets download -d nih-chest-xrays/data",
            "xrayfx data nih nih -o nih.csv",
        ),
        notes="112,120 images of 30,805 adults and children; labels mined from reports by NLP",
    ),
)


def source_info(key: str) -> SourceInfo:
    """The :class:`SourceInfo` of ``key`` (``cohen``, ``kermany``/``mooney``, ``nih``)."""
    for info in SOURCES:
        if key in (info.key, info.manifest_source):
            return info
    raise UsageError(
        f"expected one of {', '.join(i.key for i in SOURCES)}, got {key!r}; "
        "fix: run `xrayfx data sources` for the list"
    )
