"""What a run does besides training its target model: the config sections ``regularizer``
(:mod:`.regularize`), ``source_task`` (:mod:`.source_task`) and ``wise_ft`` (:mod:`.wise`).

:func:`adapt.harness.loop.run` calls one :class:`RunHooks` at four points -- after building the
experiment, when a stage starts, after each step and at the end -- so the loop stays about the
loop and each concern stays in its own module. With none of the sections configured every hook
is a no-op.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapt import partition
from adapt.harness import regularize, source_task, wise
from adapt.metrics import METRICS_FILE, MetricsWriter, read_metrics
from adapt.train import Trainer


def check(config: Any) -> None:
    """Static checks of the three sections; raises ConfigError naming each problem."""
    regularize.check(config)
    source_task.check(config)
    wise.check(config)


class RunHooks:
    check = staticmethod(check)

    def __init__(
        self,
        exp: Any,
        workdir: Path,
        source: source_task.SourceTask | None,
        regularizer: regularize.Regularizer | None,
        wise_curve: wise.WiseCurve | None,
        eval_batch_size: int,
    ) -> None:
        self.exp, self.workdir = exp, Path(workdir)
        self.source, self.regularizer, self.wise = source, regularizer, wise_curve
        self.eval_batch_size = eval_batch_size

    @classmethod
    def create(cls, exp: Any, workdir: str | Path) -> RunHooks:
        """Check the sections, load the source head and data, compute EWC's Fisher. Writes
        nothing, so a bad config leaves the workdir untouched."""
        config = exp.config
        model = exp.model
        batch_size = config.train.eval_batch
        source = source_task.SourceTask.create(
            config, model, seed=exp.seed, batch_size=batch_size, mesh=exp.mesh
        )
        regularizer = regularize.Regularizer.create(
            config, model, exp.stages, source, seed=exp.seed
        )
        curve = wise.WiseCurve.create(config, Path(workdir), len(exp.stages), model.params)
        return cls(exp, Path(workdir), source, regularizer, curve, batch_size)

    def start_stage(
        self,
        trainer: Trainer,
        trainable: dict,
        stage_index: int,
        step: int,
        stage_start: int,
        writer: MetricsWriter,
    ) -> Trainer:
        """At the start (or resumption) of a stage: the trainer to use (with the penalty if a
        regularizer is configured); records WiSE-FT's theta_0; evaluates the source task at 0."""
        model = self.exp.model
        if self.source is not None and step == 0:
            writer.write(
                0, source_task.SPLIT, self.source.evaluate(model.params, model.model_state)
            )
        if self.wise is not None:
            self.wise.stage_start(stage_index, step > stage_start, model.params)
        if self.regularizer is not None:
            return self.regularizer.trainer(trainer, trainable)
        return trainer

    def after_step(
        self, step: int, total: int, state: dict, frozen: dict, writer: MetricsWriter
    ) -> None:
        if self.source is not None and self.source.due(step, total):
            params = partition.merge(state["trainable"], frozen)
            writer.write(
                step, source_task.SPLIT, self.source.evaluate(params, state["model_state"])
            )

    def finish(self, step: int, writer: MetricsWriter) -> dict:
        """Final source-task metrics and curve, and the WiSE-FT curve, for results.json."""
        model, results = self.exp.model, {}
        if self.source is not None:
            final = self.source.evaluate(model.params, model.model_state)
            writer.write(step, source_task.SPLIT, final)
            results["source_eval"] = final
            results["source_curve"] = source_task.curve(read_metrics(self.workdir / METRICS_FILE))
        if self.regularizer is not None:
            results["regularizer"] = {
                "kind": self.regularizer.kind,
                "strength": self.regularizer.strength,
            }
        if self.wise is not None:
            evaluate = wise.evaluator(self.exp, model.model_state, self.eval_batch_size)
            results["wise_ft"] = self.wise.curve(model.params, evaluate)
        return results


__all__ = ["RunHooks", "check"]
