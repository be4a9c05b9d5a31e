"""The report card stored with a quantized checkpoint: report.json and a self-contained report.html.

``build_report(dir, float_model, eval_data)`` gathers the facts (bytes, per-layer scheme/method/kernel/error,
quality vs float, worst-layer histograms with the quantization levels, robustness, energy, provenance);
``write_report(dir, report)`` writes both files atomically. ``quanta quantize`` writes them after saving and
``quanta report DIR`` regenerates them (docs/report.md).
"""

from quanta.report.build import REPORT_VERSION, build_report
from quanta.report.html import REPORT_HTML, REPORT_JSON, render_html, write_report

__all__ = ["REPORT_HTML", "REPORT_JSON", "REPORT_VERSION", "build_report", "render_html", "write_report"]
