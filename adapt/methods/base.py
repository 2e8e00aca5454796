"""What an adaptation method is, and how methods attach to any model without touching its code.

A method is an object with
- ``intercept(next_fun, args, kwargs, context)``: a Flax method interceptor. It sees every
  module method call (``context.module``, ``context.method_name``) and may wrap it; LoRA wraps
  ``nn.Dense.__call__`` on matching module paths, prompt tuning wraps the models'
  ``extend_inputs`` extension point. Parameters it creates inside the intercepted module
  (``context.module.param("lora_a", ...)``) land beside that module's own
  (``.../query/lora_a``), so they are ordinary leaves of the parameter tree.
- ``rules()``: the partition rules it implies, e.g. ``[(r".*/lora_[ab]", "lora")]``.
- optionally ``merge(params)`` (fold the method into the base weights) and ``regularizer``.

Everything else follows from the contracts in :mod:`adapt.partition`: the method's leaves are
labelled trainable, the base frozen, and the loss is differentiated with respect to the trainable
leaves only.

    methods = [LoRA(targets=r".*attention/self/(query|value)", rank=8)]
    extra = init(model, base_params, methods, rng, input_ids)      # method params only
    params = partition.merge(base_params, extra)
    logits = apply(model, params, methods, input_ids)["logits"]
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax

from adapt import paths
from adapt.errors import AdaptError
from adapt.methods.layers import LAYER_NAMES, LAYERS
from adapt.models import families

Rules = list[tuple[str, str | None]]


class MethodError(AdaptError, ValueError):
    """A method was configured in a way that cannot work on this model."""


def family_default(family: str, what: str) -> Any:
    """A family's default targets for a method (``"lora_targets"``, ``"ia3"``, ...), read from
    its registry record, or a :class:`MethodError` saying to pass targets explicitly."""
    try:
        return families.get(family).default(what)
    except families.UnknownFamilyError as e:
        message = str(e) if "explicitly" in str(e) else f"{e}; pass targets explicitly"
        raise MethodError(message) from None


def module_path(context: Any) -> str:
    """The ``/``-joined path of the intercepted module (matches its parameters' prefix)."""
    return "/".join(str(p) for p in context.module.path)


def compile_targets(targets: str | Sequence[str]) -> re.Pattern:
    """Full-match regex over module paths. A list of names means "modules with any of these
    names" (PEFT's list semantics): ``["query", "value"]`` -> ``(.*/)?(query|value)``."""
    if isinstance(targets, str):
        pattern = targets
    else:
        pattern = "(.*/)?(" + "|".join(re.escape(t) for t in targets) + ")"
    try:
        return re.compile(pattern)
    except re.error as e:
        raise MethodError(f"target pattern {pattern!r} is not a valid regex ({e})") from e


class Method:
    """Base class: a method that intercepts nothing and trains nothing.

    Subclasses record the module paths they attached to in ``self.matched`` and every candidate
    they saw in ``self.candidates``, so :func:`init` can say which paths exist when a target
    pattern matches nothing.
    """

    name: str = "method"

    def __init__(self) -> None:
        self.matched: set[str] = set()
        self.candidates: set[str] = set()

    def intercept(self, next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        return next_fun(*args, **kwargs)

    def rules(self) -> Rules:
        return []

    def merge(self, params: dict) -> dict:
        raise NotImplementedError(f"{type(self).__name__} cannot be merged into the base weights")

    def check_attached(self) -> None:
        """Raise if the method attached to nothing (called after :func:`init`)."""
        if getattr(self, "requires_match", True) and not self.matched:
            raise MethodError(
                f"{type(self).__name__} {self.describe_targets()} matched no module. "
                f"Available module paths:{paths.shorten_list(sorted(self.candidates), 80)}"
            )

    def describe_targets(self) -> str:
        return ""


class DenseMethod(Method):
    """A method that wraps every linear layer (``nn.Dense``, ``nn.DenseGeneral``, ``nn.Einsum``,
    ``nn.Conv``: :mod:`adapt.methods.layers`) whose module path full-matches ``targets``.

    Subclasses implement :meth:`wrap`; the matching, the bookkeeping of matched and candidate
    paths (for the "matched nothing" error) and the call of the original layer live here once.
    """

    def __init__(self, targets: str | Sequence[str]) -> None:
        super().__init__()
        self.targets = targets
        self.pattern = compile_targets(targets)

    def intercept(self, next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        mod = context.module
        if not isinstance(mod, LAYERS) or context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        path = module_path(context)
        self.candidates.add(path)
        if not self.pattern.fullmatch(path):
            return next_fun(*args, **kwargs)
        self.matched.add(path)
        kwargs = dict(kwargs)
        x = args[0] if args else kwargs.pop("inputs")
        return self.wrap(mod, path, x, lambda inputs: next_fun(inputs, *args[1:], **kwargs))

    def describe_targets(self) -> str:
        return f"targets={self.targets!r} (of the {LAYER_NAMES} layers)"

    def wrap(self, mod: nn.Module, path: str, x: jax.Array, dense: Callable) -> jax.Array:
        """The matched layer's new output; ``dense(inputs)`` runs the original layer."""
        raise NotImplementedError


@contextlib.contextmanager
def attached(methods: Sequence[Method]) -> Iterator[None]:
    """Activate the methods' interceptors (outermost first) for the enclosed model calls."""
    with contextlib.ExitStack() as stack:
        for method in methods:
            stack.enter_context(nn.intercept_methods(method.intercept))
        yield


def apply(model: nn.Module, params: dict, methods: Sequence[Method], *args: Any, **kwargs: Any):
    """``model.apply`` with the methods attached. Pass ``rngs={"dropout": key}`` to train."""
    variables = kwargs.pop("variables", None) or {"params": params}
    with attached(methods):
        return model.apply(variables, *args, **kwargs)


def init(
    model: nn.Module,
    base_params: dict,
    methods: Sequence[Method],
    rng: jax.Array,
    *args: Any,
    **kwargs: Any,
) -> dict:
    """Create the methods' parameters for a model whose base parameters are given.

    The model is applied once (abstractly shaped, jitted) with ``params`` mutable: existing base
    leaves are used as they are, leaves a method asks for are created from ``rng``. Returns only
    the new leaves. Raises if a method attached to nothing, listing the module paths it could
    have used.
    """
    variables = kwargs.pop("variables", None) or {"params": base_params}

    def run(variables, rng):
        with attached(methods):
            _, new = model.apply(
                variables, *args, rngs={"params": rng}, mutable=["params"], **kwargs
            )
        return new["params"]

    for method in methods:
        method.matched.clear()
        method.candidates.clear()
    all_params = jax.jit(run)(variables, rng)
    for method in methods:
        method.check_attached()
    base = paths.flatten(variables["params"])
    return paths.unflatten({p: v for p, v in paths.flatten(all_params).items() if p not in base})


def rules_for(methods: Sequence[Method]) -> Rules:
    """All methods' partition rules, in order."""
    return [rule for m in methods for rule in m.rules()]


def merge_all(params: dict, methods: Sequence[Method]) -> dict:
    """Fold every mergeable method into the base weights (pure; returns new params)."""
    for method in methods:
        params = method.merge(params)
    return params
