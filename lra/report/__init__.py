"""The report: leaderboards (Markdown, HTML, CSV) and plots from run records.

Reads records only (pandas, matplotlib); never imports the models, tasks or runners.

    records = load_records(Path("results/runs"))
    write_report(records, Path("results"), reference="lra_paper")   # every file at once
    summary = summarise(records, reference="lra_paper")             # or piece by piece
    accuracy_tables(summary.accuracy); efficiency_tables(summary.efficiency, group); ...
    techniques_tables(summary.techniques, summary.sparsity)
    for setting in settings(summary.curves):                       # learning curves, time to accuracy
        curves_plot(summary.curves, setting); time_to_accuracy_table(summary.time_to_accuracy, setting)
    for _, cells in summary.lengths.groupby(["hardware", "task"]):  # accuracy against length
        length_table(cells); length_plot(cells)
"""

from lra.report.accuracy import accuracy_tables
from lra.report.cells import FUSED, PLAIN, Group, groups
from lra.report.crossover import crossover_table
from lra.report.curves import Setting, curves_plot, settings, time_to_accuracy_table
from lra.report.efficiency import efficiency_tables
from lra.report.lengths import length_plot, length_table
from lra.report.load import load_records
from lra.report.plots import bubble_plot, scaling_plot
from lra.report.reference import known_references, load_reference
from lra.report.render import write_report
from lra.report.summary import Summary, summarise
from lra.report.table import Table
from lra.report.techniques import techniques_tables

__all__ = [
    "FUSED", "PLAIN", "Group", "Setting", "Summary", "Table", "accuracy_tables", "bubble_plot", "crossover_table",
    "curves_plot", "efficiency_tables", "groups", "known_references", "length_plot", "length_table", "load_records",
    "load_reference", "scaling_plot", "settings", "summarise", "techniques_tables", "time_to_accuracy_table",
    "write_report",
]
