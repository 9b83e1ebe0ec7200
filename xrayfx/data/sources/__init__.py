"""Source readers and the paper's composition: each public data set's own layout → an xrayfx manifest.

Readers (:func:`read_cohen`, :func:`read_kermany`, :func:`read_nih`) return a
:class:`ReaderResult` (rows with absolute paths, missing files, dropped counts, problems);
:func:`write_manifest` writes rows as CSV with paths relative to the manifest. Patient ids
always carry their source as a prefix (``cohen-19``, ``nih-00000019``, ``mooney-IM-0115``), so
numeric ids of different sources never merge.
"""

from xrayfx.data.sources.checks import DuplicateGroup, LabelConflict, find_duplicate_files, find_label_conflicts
from xrayfx.data.sources.cohen import COHEN_FRONTAL_VIEWS, cohen_label, cohen_patient_id, is_covid_finding, read_cohen
from xrayfx.data.sources.info import SOURCES, SourceInfo, source_info
from xrayfx.data.sources.kermany import kermany_patient_id, kermany_pneumonia_type, read_kermany
from xrayfx.data.sources.nih import nih_label, nih_patient_id, read_nih
from xrayfx.data.sources.paper import (
    NORMAL_SOURCES,
    PAPER_N_COVID,
    PAPER_N_NORMAL,
    PaperComposition,
    compose_paper,
    composition_counts,
    confounding_warnings,
)
from xrayfx.data.sources.rows import (
    MANIFEST_COLUMNS,
    ReaderResult,
    Row,
    age_group,
    load_manifest_rows,
    write_manifest,
)

__all__ = [
    "COHEN_FRONTAL_VIEWS", "MANIFEST_COLUMNS", "NORMAL_SOURCES", "PAPER_N_COVID", "PAPER_N_NORMAL",
    "SOURCES", "DuplicateGroup", "LabelConflict", "PaperComposition", "ReaderResult", "Row",
    "SourceInfo", "age_group", "cohen_label", "cohen_patient_id", "compose_paper",
    "composition_counts", "confounding_warnings", "find_duplicate_files", "find_label_conflicts",
    "is_covid_finding", "kermany_patient_id", "kermany_pneumonia_type", "load_manifest_rows",
    "nih_label", "nih_patient_id", "read_cohen", "read_kermany", "read_nih", "source_info",
    "write_manifest",
]
