"""Reports of trained runs: Table 2 beside the paper, intervals on every number, and a shortcut audit.

``build_report(runs, out, ablation=True, cache_dir=None)`` writes ``report.md``,
a self-contained ``report.html`` and ``report.json`` for one run or several
(one per backbone); ``xrayfx report RUN…`` is its command line. See
:mod:`xrayfx.report.build` (the numbers), :mod:`xrayfx.report.audit` (the
shortcut audit), :mod:`xrayfx.report.figures` and :mod:`xrayfx.report.render`.
"""

from __future__ import annotations

from xrayfx.report.build import DEFAULT_RESAMPLES, ReportResult, build_report, read_run

__all__ = ["DEFAULT_RESAMPLES", "ReportResult", "build_report", "read_run"]
