"""The demo pipeline: stages run in order, each timed, a failing stage reported while the later
stages run where they can; :func:`run_demo` runs the whole demo into one folder."""

from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from cellsynth import __version__
from cellsynth.atomic import check_writable, write_text
from cellsynth.demo import stages
from cellsynth.demo.presets import preset as make_preset
from cellsynth.demo.report import write_demo_report
from cellsynth.errors import CellsynthError, first_line


@dataclass
class Stage:
    name: str
    status: str = "pending"  # ok | failed | skipped
    seconds: float = 0.0
    detail: str = ""
    error: str = ""
    outputs: dict = field(default_factory=dict)


class Pipeline:
    """Runs stages in order, timing each, isolating failures, echoing progress."""

    def __init__(self, echo=print):
        self.stages: list[Stage] = []
        self.echo = echo

    def run(self, name: str, func, *needs: str) -> Stage:
        stage = Stage(name)
        self.stages.append(stage)
        missing = [n for n in needs if self.status(n) != "ok"]
        if missing:
            stage.status = "skipped"
            stage.detail = f"needs {', '.join(missing)}"
            self.echo(f"[demo] {name}: skipped ({stage.detail})")
            return stage
        self.echo(f"[demo] {name} ...")
        t0 = time.time()
        try:
            result = func()
            stage.status = "ok"
            if isinstance(result, dict):
                stage.outputs = result
                stage.detail = str(result.pop("detail", ""))
        except Exception as exc:  # a failing stage must not stop the others
            stage.status = "failed"
            stage.error = f"{type(exc).__name__}: {first_line(exc)}"
            stage.outputs["traceback"] = traceback.format_exc()
        stage.seconds = time.time() - t0
        msg = stage.detail if stage.status == "ok" else stage.error
        self.echo(f"[demo] {name}: {stage.status} in {stage.seconds:.0f}s  {msg}")
        return stage

    def status(self, name: str) -> str:
        for s in self.stages:
            if s.name == name:
                return s.status
        return "missing"

    def get(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def _prepare(out: Path, data, overwrite: bool) -> None:
    """Check the user's data and make an empty ``out`` (refused if it is not a demo folder)."""
    if data is not None:
        from cellsynth.datasets.canonical import resolve_split

        resolve_split(data, "train")  # fail now, before anything is written
        resolve_split(data, "test")
    if out.exists():
        check_writable(out, overwrite)
        if not (out / "demo.json").exists() and any(out.iterdir()):
            raise CellsynthError(f"{out} exists and is not a demo folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _echo_figures(pipe: Pipeline, echo) -> None:
    """Print the report's answer and the demo's goals."""
    from cellsynth.demo.answer import demo_goals, headline

    res = pipe.get("benchmark").outputs.get("results") if pipe.status("benchmark") == "ok" else None
    real = pipe.get("realism").outputs.get("figures") if pipe.status("realism") == "ok" else None
    if res:
        for line in headline(res):
            echo(f"[demo] {line}")
    for goal, g in demo_goals(res, real).items():
        echo(f"[demo] goal {'met' if g['met'] else 'NOT met'}: {goal}: {g['value']}")


def run_demo(
    out="demo-out",
    data=None,
    minutes: float | None = None,
    preset: str = "laptop",
    segmenters: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    echo=print,
) -> Path:
    """Run the whole pipeline into ``out``; return the path of ``report.html``.

    Args:
        out: output folder (refused if it exists, unless ``overwrite``).
        data: a canonical dataset (root with train/ and test/ splits); None = the embedded
            real sample (DSB2018 nuclei).
        minutes: fine-tuning budget of the two GANs together (default per preset).
        preset: "laptop" or "tiny" (sizes of data, networks and budgets).
        segmenters: comma-separated names for the benchmark (default per preset).
        overwrite: replace ``out``.
        seed: seed of everything random.
        echo: progress printer.
    """
    cfg = make_preset(preset, minutes, segmenters)
    out = Path(out)
    _prepare(out, data, overwrite)
    demo = stages.Demo(out=out, cfg=cfg, seed=seed, user_data=data)
    pipe = Pipeline(echo)
    t_start = time.time()
    for name, func, needs in stages.STAGES:
        pipe.run(name, lambda func=func: func(demo), *needs)
    summary = {
        "version": __version__,
        "preset": preset,
        "config": cfg.to_dict(),
        "seed": seed,
        "minutes_budget": cfg.minutes,
        "seconds_total": round(time.time() - t_start, 1),
        "paths": {k: str(v) for k, v in demo.paths.items()},
        "stages": [
            {
                "name": s.name,
                "status": s.status,
                "seconds": round(s.seconds, 1),
                "detail": s.detail,
                "error": s.error,
            }
            for s in pipe.stages
        ],
    }
    summary["facts"] = demo.facts
    write_text(out / "demo.json", json.dumps(summary, indent=1, default=str))
    report = write_demo_report(out, pipe, demo.paths, summary, demo.facts)
    _echo_figures(pipe, echo)
    echo(f"[demo] done in {summary['seconds_total']:.0f}s; report: {report.resolve()}")
    return report
