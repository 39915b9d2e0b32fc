"""``semimatch report``: an offline HTML report with PNG figures for one or several runs.

Shows the pseudo-label quantity/quality trade-off of the reference ("Pseudo-label quantity and
quality": quantity ``f = mean w_i / lambda_max``, quality ``g = sum w_i 1[y_hat_i = y_i] /
sum w_i``) as logged by the engine in ``metrics.jsonl`` (schema: ``semimatch.training.metrics``),
next to the test error, the weighting function lambda(p) over the confidence histogram, per-class
statistics, the final confusion matrix and a table comparing the runs.

Works on finished, running and crashed runs: it reads whatever has been logged (a torn last line
is skipped by ``read_jsonl``) and says in the HTML what is missing and why.  ``runs.py`` reads
the run directories (``read_run`` -> ``RunData``; a folder of runs stands for the runs under it)
and makes the comparison table, ``lambdas.py`` rebuilds each run's lambda(p) from its logged
weighting state (one formula per weighting type, for the overlay of runs of different methods),
``figures.py`` draws, ``page.py`` writes the HTML.
"""

from semimatch.report.page import build_report
from semimatch.report.runs import RunData, comparison_rows, format_row, read_run, run_status

__all__ = ["RunData", "build_report", "comparison_rows", "format_row", "read_run", "run_status"]
