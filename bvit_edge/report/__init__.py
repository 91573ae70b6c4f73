"""Reports: a JSON document (``schema_version``, units in field names) rendered to Markdown and PNG plots.

- ``schema``: the layout and :func:`validate_report`;
- ``latency`` / ``size``: build records from raw timings and weight counts;
- ``markdown`` / ``plots``: the renderers (drawn from the JSON only; matplotlib Agg);
- ``render``: :func:`render_report` (``json_path, out_dir``), :func:`load_report`, :func:`write_report`.
"""

from bvit_edge.report.latency import latency_entry, summarize_latency
from bvit_edge.report.render import load_report, render_report, write_report
from bvit_edge.report.schema import SCHEMA, SCHEMA_VERSION, validate_report
from bvit_edge.report.size import size_entry

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "latency_entry",
    "load_report",
    "render_report",
    "size_entry",
    "summarize_latency",
    "validate_report",
    "write_report",
]
