"""Which parameters train, and in which optimizer group: regex rules over parameter paths.

A rule list is ``[(regex, label), ...]`` matched against each leaf's ``/``-joined path with
full-match semantics; the **first match wins**; label ``None`` freezes the leaf. Every leaf must be
covered and every rule must match something, otherwise the run stops with an error that lists the
uncovered leaves or names the idle rule (a typo in a regex otherwise silently trains nothing, or
everything).

The labels drive everything downstream, as Levanter's trainability filter does: the loss is
differentiated with respect to the trainable subtree only (so gradients and optimizer state exist
only for trainable leaves), ``optax.multi_transform`` assigns an optimizer per label, checkpoints
store the trainable subtree, and frozen leaves may be kept in a lower precision.

    labels = label(params, [(r".*lora_[ab]", "lora"), (r"classifier/.*", "head"), (r".*", None)])
    trainable, frozen = split(params, labels)
    params = merge(trainable, frozen)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adapt import paths
from adapt.errors import AdaptError

Rules = Sequence[tuple[str, str | None]]
FROZEN = None


class PartitionError(AdaptError, ValueError):
    """Partition rules that leave leaves uncovered, match nothing, or are malformed."""


def _compile(rules: Rules) -> list[tuple[re.Pattern, str | None, str]]:
    compiled = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, tuple | list) and len(rule) == 2):
            raise PartitionError(f"rule {i} is {rule!r}; expected a (regex, label) pair")
        pattern, lab = rule
        if lab is not None and not isinstance(lab, str):
            raise PartitionError(f"rule {pattern!r}: label must be a string or None, got {lab!r}")
        try:
            compiled.append((re.compile(pattern), lab, pattern))
        except re.error as e:
            raise PartitionError(f"rule {i}: {pattern!r} is not a valid regex ({e})") from e
    return compiled


def label_paths(
    names: Sequence[str], rules: Rules, *, require_all_rules_used: bool = True
) -> dict[str, str | None]:
    """Label each path by the first rule whose regex full-matches it."""
    compiled = _compile(rules)
    used = [False] * len(compiled)
    labels: dict[str, str | None] = {}
    uncovered = []
    for name in names:
        for i, (regex, lab, _) in enumerate(compiled):
            if regex.fullmatch(name):
                labels[name] = lab
                used[i] = True
                break
        else:
            uncovered.append(name)
    if uncovered:
        raise PartitionError(
            f"{len(uncovered)} parameters match no rule:{paths.shorten_list(uncovered)}\n"
            "Add a rule for them; end the list with ('.*', None) to freeze everything else."
        )
    idle = [pattern for (_, _, pattern), u in zip(compiled, used, strict=True) if not u]
    if idle and require_all_rules_used:
        raise PartitionError(
            f"rules match no parameter (first match wins, so an earlier rule may shadow them): "
            f"{idle}. Available parameter paths:{paths.shorten_list(list(names), 60)}"
        )
    return labels


def label(params: Mapping[str, Any], rules: Rules, **kwargs: Any) -> dict[str, Any]:
    """A pytree shaped like ``params`` whose leaves are labels (``None`` = frozen)."""
    flat = paths.flatten(params)
    return paths.unflatten(label_paths(list(flat), rules, **kwargs))


def split(params: Mapping[str, Any], labels: Mapping[str, Any]) -> tuple[dict, dict]:
    """``(trainable, frozen)`` nested dicts holding the leaves whose label is / is not None."""
    flat_p, flat_l = paths.flatten(params), _flat_labels(labels)
    if set(flat_p) != set(flat_l):
        missing = sorted(set(flat_p) ^ set(flat_l))
        raise PartitionError(
            f"labels do not match params; differing paths:{paths.shorten_list(missing)}"
        )
    trainable = {p: v for p, v in flat_p.items() if flat_l[p] is not FROZEN}
    frozen = {p: v for p, v in flat_p.items() if flat_l[p] is FROZEN}
    return paths.unflatten(trainable), paths.unflatten(frozen)


def merge(*trees: Mapping[str, Any]) -> dict:
    """Join disjoint parameter subtrees (trainable, frozen, method params) into one tree."""
    flat: dict[str, Any] = {}
    for tree in trees:
        for p, v in paths.flatten(tree).items():
            if p in flat:
                raise PartitionError(f"parameter {p!r} appears in more than one subtree")
            flat[p] = v
    return paths.unflatten(flat)


def trainable_labels(labels: Mapping[str, Any]) -> dict:
    """The labels of the trainable leaves only: the label tree for ``optax.multi_transform``."""
    return paths.unflatten({p: lab for p, lab in _flat_labels(labels).items() if lab is not FROZEN})


def _flat_labels(labels: Mapping[str, Any]) -> dict[str, str | None]:
    # A label tree holds None for frozen leaves; paths.flatten keeps None as a leaf value
    # (jax.tree_util would drop it as an empty subtree, which is why labels are not jax pytrees).
    return paths.flatten(labels)


def summary(params: Mapping[str, Any], labels: Mapping[str, Any]) -> str:
    """A table ``label | leaves | parameters | % | bytes`` for logs and READMEs."""
    flat_p, flat_l = paths.flatten(params), _flat_labels(labels)
    rows: dict[str, list[int]] = {}
    total = 0
    for p, v in flat_p.items():
        name = "frozen" if flat_l[p] is FROZEN else flat_l[p]
        n = int(np.prod(np.shape(v)))
        nbytes = n * np.dtype(getattr(v, "dtype", np.float32)).itemsize
        row = rows.setdefault(name, [0, 0, 0])
        row[0] += 1
        row[1] += n
        row[2] += nbytes
        total += n
    lines = [f"{'label':<16} {'leaves':>7} {'parameters':>13} {'%':>8} {'bytes':>12}"]
    for name, (leaves, n, nbytes) in sorted(rows.items(), key=lambda kv: kv[0] != "frozen"):
        lines.append(
            f"{name:<16} {leaves:>7} {n:>13,} {100 * n / max(total, 1):>7.3f}% {nbytes:>12,}"
        )
    return "\n".join(lines)


def count(tree: Mapping[str, Any]) -> int:
    """Number of scalars in a parameter subtree."""
    return sum(int(np.prod(np.shape(v))) for v in paths.flatten(tree).values())
