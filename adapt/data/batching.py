"""Batches as a pure function of (seed, step): exact resume, and the same batch on every process.

Training order. Epoch ``e`` is a permutation drawn from ``np.random.default_rng([seed, e])``;
its last ``num_examples % batch_size`` examples are dropped (a different few each epoch), and
step ``k`` is batch ``k % steps_per_epoch`` of epoch ``k // steps_per_epoch``. Nothing depends on
what was yielded before, so a stream started at ``start_step=k`` yields exactly the batches a
stream started at 0 yields from its ``k``-th on: the data position a checkpoint needs is the step.

Optional length grouping (``length_grouping=G``, text only) cuts padding: the epoch's permutation
is split into chunks of ``G`` batches, each chunk is sorted by example length and cut into
batches, and the order of all the epoch's batches is shuffled with the same generator.

Processes. ``batch_size`` is the global batch. Every process computes the same global indices
and returns its contiguous block of rows ``[p*B/P, (p+1)*B/P)``, which is how
``jax.make_array_from_process_local_data`` assembles a batch-sharded global array. Shape
decisions (the padded length of a text batch) are made on the global batch, so every process
pads to the same length; augmentation randomness is drawn for the global batch and then sliced.

Evaluation. :func:`eval_batches` walks the data once; the last batch is filled up to
``batch_size`` with copies of its first example and a ``weights`` key (1.0 real, 0.0 filler) so
that weighted sums count every example exactly once and every batch has one shape. Data with
lengths (text) is walked shortest first: eval metrics are sums, so the order is free, and a batch
of similar lengths pads to the smallest bucket (Banking77 test: 3x fewer padded tokens than in
file order).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from adapt.data.dataset import DataError


class Batchable(Protocol):
    """What the batching functions need from a data set (every ``*Data`` class here has it)."""

    @property
    def num_examples(self) -> int: ...

    def lengths(self) -> np.ndarray | None: ...

    def collate(
        self, indices: np.ndarray, rows: slice, *, seed: int, step: int, train: bool
    ) -> dict[str, np.ndarray]: ...


def local_rows(batch_size: int, process_index: int = 0, process_count: int = 1) -> slice:
    """The rows of a global batch that process ``process_index`` of ``process_count`` owns."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(
            f"process_index must lie in [0, process_count); got {process_index} of {process_count}"
        )
    if batch_size < 1 or batch_size % process_count:
        raise DataError(
            f"the global batch_size ({batch_size}) must be a positive multiple of the process "
            f"count ({process_count}); use e.g. batch_size={max(1, batch_size // process_count) * process_count}"
        )
    per = batch_size // process_count
    return slice(process_index * per, (process_index + 1) * per)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch (the remainder is dropped); a DataError if there is none."""
    if num_examples < batch_size:
        raise DataError(
            f"the data has {num_examples} examples, fewer than one batch of {batch_size}; "
            f"lower batch_size to at most {num_examples} (batches drop the remainder)"
        )
    return num_examples // batch_size


def epoch_order(
    num_examples: int,
    batch_size: int,
    seed: int,
    epoch: int,
    lengths: np.ndarray | None = None,
    length_grouping: int = 0,
) -> np.ndarray:
    """The example indices of every batch of ``epoch``: shape ``(steps_per_epoch, batch_size)``."""
    steps = steps_per_epoch(num_examples, batch_size)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_examples)[: steps * batch_size]
    if length_grouping:
        if lengths is None:
            raise DataError(
                "length_grouping needs examples with lengths (tokenised text); this data has one "
                "shape per example, so use length_grouping=0"
            )
        chunk = length_grouping * batch_size
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            order[start : start + chunk] = part[np.argsort(lengths[part], kind="stable")]
    batches = order.reshape(steps, batch_size)
    if length_grouping:
        batches = batches[rng.permutation(steps)]
    return batches


def batch_indices(
    num_examples: int,
    batch_size: int,
    seed: int,
    step: int,
    lengths: np.ndarray | None = None,
    length_grouping: int = 0,
) -> np.ndarray:
    """The global example indices of training batch ``step`` (a pure function of its inputs)."""
    epoch, k = divmod(step, steps_per_epoch(num_examples, batch_size))
    return epoch_order(num_examples, batch_size, seed, epoch, lengths, length_grouping)[k]


def train_batches(
    data: Batchable,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    *,
    length_grouping: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Training batches from ``start_step`` on, forever: this process's rows of each global batch.

    Batch ``k`` depends only on (data, batch_size, seed, k, length_grouping); see the module
    docstring. Augmentation (images) is seeded by ``(seed, k)``.
    """
    if start_step < 0:
        raise DataError(f"start_step must be >= 0; got {start_step}")
    rows = local_rows(batch_size, process_index, process_count)
    steps = steps_per_epoch(data.num_examples, batch_size)
    if length_grouping < 0:
        raise DataError(f"length_grouping must be >= 0; got {length_grouping}")
    lengths = data.lengths() if length_grouping else None
    step, cached_epoch, order = start_step, None, None
    while True:
        epoch, k = divmod(step, steps)
        if epoch != cached_epoch:
            order = epoch_order(
                data.num_examples, batch_size, seed, epoch, lengths, length_grouping
            )
            cached_epoch = epoch
        yield data.collate(order[k], rows, seed=seed, step=step, train=True)
        step += 1


def num_eval_batches(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)


def eval_order(data: Batchable) -> np.ndarray:
    """The order :func:`eval_batches` visits the examples in: shortest first where lengths are
    known (less padding), else as stored."""
    lengths = data.lengths()
    n = data.num_examples
    return np.arange(n) if lengths is None else np.argsort(lengths, kind="stable")


def eval_batches(
    data: Batchable, batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[dict[str, np.ndarray]]:
    """Every example once (shortest first where lengths are known); the last batch is filled up
    with weight-0 copies."""
    rows = local_rows(batch_size, process_index, process_count)
    n = data.num_examples
    if n == 0:
        raise DataError("cannot evaluate on an empty data set")
    order = eval_order(data)
    for start in range(0, n, batch_size):
        real = order[start : min(start + batch_size, n)]
        indices = np.concatenate([real, np.full(batch_size - len(real), real[0])])
        weights = (np.arange(batch_size) < len(real)).astype(np.float32)
        batch = data.collate(indices, rows, seed=0, step=0, train=False)
        batch["weights"] = weights[rows]
        yield batch


__all__ = [
    "Batchable",
    "batch_indices",
    "epoch_order",
    "eval_batches",
    "eval_order",
    "local_rows",
    "num_eval_batches",
    "steps_per_epoch",
    "train_batches",
]
