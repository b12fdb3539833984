"""The whole pipeline in one command, sized for a laptop CPU: ``cellsynth demo``.

- ``presets``   sizes of data, networks and budgets (laptop, tiny)
- ``stages``    data, synth, realism, finetune-masks, finetune-images, benchmark
- ``answer``    what the report leads with: the segmenter to trust, how sure, the agreement
- ``pipeline``  runs the stages in order, timed, a failure isolated; :func:`run_demo`
- ``report``    ``OUT/report.html`` (HTML helpers shared with the benchmark report:
                :mod:`cellsynth.htmlkit`)

Like the CLI, this package sits on top of every other; nothing imports it but the CLI.
"""

from cellsynth.demo.pipeline import Pipeline, Stage, run_demo
from cellsynth.demo.presets import BUDGET_SHARES, PRESETS, Preset
from cellsynth.demo.report import write_demo_report

__all__ = [
    "BUDGET_SHARES",
    "PRESETS",
    "Pipeline",
    "Preset",
    "Stage",
    "run_demo",
    "write_demo_report",
]
