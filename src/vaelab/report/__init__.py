"""report.html of a run or a sweep: a layer of its own, above the tools it reads
(``vaelab.report.html`` builds the page)."""

from vaelab.report.html import figure_paths, generate_figures, report_kind, write_report

__all__ = ["figure_paths", "generate_figures", "report_kind", "write_report"]
