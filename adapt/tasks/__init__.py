"""Tasks: losses and metrics on model outputs, as objects the harness calls (:class:`Task`).

``get(config.task)`` is the task of a run: :class:`~adapt.tasks.classification.Classification`,
:class:`~adapt.tasks.regression.Regression` or :class:`~adapt.tasks.causal_lm.CausalLM`. The
loss and metric functions of each module also serve library users directly.
"""

from __future__ import annotations

from adapt.errors import AdaptError
from adapt.tasks.causal_lm import CausalLM
from adapt.tasks.classification import Classification
from adapt.tasks.regression import Regression
from adapt.tasks.task import Task

TASKS: dict[str, Task] = {t.name: t for t in (Classification(), Regression(), CausalLM())}


class UnknownTaskError(AdaptError, ValueError):
    """A task name that no :class:`Task` in :data:`TASKS` has."""


def get(name: str | Task) -> Task:
    """The task called ``name`` (a :class:`Task` is returned as it is)."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name]


def lower_is_better() -> set[str]:
    """Metric names that improve downwards, in any task (model selection's direction)."""
    return {m for t in TASKS.values() for m in t.lower_is_better}


__all__ = ["TASKS", "CausalLM", "Classification", "Regression", "Task", "UnknownTaskError", "get"]
