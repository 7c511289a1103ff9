"""Stage report: the paper-layout report, from the stage stamps only (runs no episodes)."""

from __future__ import annotations

from ..cache import Context
from ..report.render import report_folder, write_report


def report(ctx: Context) -> dict:
    """Stage 7: write the report of the run folder into its report folder."""
    folder = report_folder(ctx.config.runtime.report_dir, ctx.output)
    return write_report(ctx.output, folder, ctx.log)
