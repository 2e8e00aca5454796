"""The classification recipe shared by configs/text/minilm.py (the studies' data sets, where
the recipe is described and its results quoted), configs/text/classify.py and
configs/vision/classify.py (your own data and checkpoint). Not a runnable config:
:func:`classifier` builds the run config from the data and model sections those files choose.
"""

import ml_collections

from adapt.config import ConfigError

# method -> (label of its trainable leaves, learning rate, options). Learning rates in the usual
# ranges for BERT-sized encoders; the head (started from the probe) trains with the same one.
METHODS = {
    "full": ("backbone", 5e-5, {}),
    "lp_ft": ("backbone", 5e-5, {}),  # full fine-tuning from the probed head, whatever head_init
    "gradual_unfreezing": ("backbone", 5e-5, {}),
    "scratch": ("backbone", 5e-4, {}),
    "bitfit": ("bias", 1e-3, {}),
    "lora": ("lora", 1e-3, {"rank": 8, "alpha": 16}),
    "dora": ("lora", 1e-3, {"rank": 8, "alpha": 16}),
    "ia3": ("ia3", 5e-3, {}),
    "houlsby": ("adapter", 1e-3, {"bottleneck": 64}),
    "pfeiffer": ("adapter", 1e-3, {"bottleneck": 64}),
    "prefix": ("prefix", 1e-3, {"num_tokens": 10, "mlp_hidden": 256}),
    "prompt": ("prompt", 3e-2, {"num_tokens": 16}),
    "ptuning_v2": ("prefix", 5e-3, {"num_tokens": 10}),
    "linear_probe": (None, 0.0, {}),
    "logistic_regression": (None, 0.0, {}),
}
FRESH_HEAD_LR = 1e-3  # a head trained from random init (head_init=fresh, scratch)
EPOCHS = {"few": 25, "all": 2}  # few-label budgets / all the training data
PATIENCE = 5  # evaluations without a better validation accuracy before stopping


def check(arg) -> None:
    """The method and head_init arguments every recipe config takes."""
    if arg.method not in METHODS:
        raise ConfigError(f"unknown method {arg.method!r}; choose from {sorted(METHODS)}")
    if arg.head_init not in ("probe", "fresh"):
        raise ConfigError(f"head_init must be probe or fresh, got {arg.head_init!r}")
    if getattr(arg, "task", "classification") not in ("classification", "regression"):
        raise ConfigError(f"task must be classification or regression, got {arg.task!r}")
    if getattr(arg, "task", "") == "regression" and is_fit_only(arg.method):
        raise ConfigError(
            f"method={arg.method} fits a logistic regression over classes; regression needs a "
            "method that trains (lora, full, ...)"
        )


def is_fit_only(method: str) -> bool:
    """The baseline and the probe: a head fitted on frozen features, no training steps."""
    return METHODS[method][0] is None


def val_fraction(method: str, few: bool) -> float:
    """Fitted-only methods (the baseline, the probe) have nothing to select: they fit on every
    labelled example, as the few-label methods do after their refit on train + validation."""
    return 0.0 if is_fit_only(method) else 0.2 if few else 0.1


def classifier(
    arg,
    *,
    model: dict,
    data: dict,
    batch: int,
    few: bool,
    eval_every: int = 0,
    eval_every_epochs: float | None = None,
    log_every: int = 50,
    length_grouping: int = 50,
) -> ml_collections.ConfigDict:
    """The run config of ``arg.method`` (with ``arg.lr_scale``, ``head_init``, ``epochs``,
    ``wise``, ``export``, ``seed``, ``smoke``) on ``data``, evaluating every ``eval_every`` steps
    or ``eval_every_epochs`` epochs; ``few``: a few-label budget (validation share, refit,
    epochs)."""
    label, lr, options = METHODS[arg.method]
    fit_only = label is None
    lr *= arg.lr_scale
    regression = getattr(arg, "task", "classification") == "regression"
    head_init = {"scratch": "fresh", "lp_ft": "probe"}.get(arg.method, arg.head_init)
    if regression:  # the probe is a logistic regression: a regression head starts fresh
        head_init = "fresh"
    method = "full" if arg.method == "lp_ft" else arg.method

    c = ml_collections.ConfigDict()
    c.seed = arg.seed
    c.task = "regression" if regression else "classification"
    c.model = dict(model, init="scratch" if arg.method == "scratch" else "pretrained")
    c.method = dict(name=method, options=dict(options), head_init=head_init)
    head_lr = lr if head_init == "probe" else FRESH_HEAD_LR
    c.optim = dict(
        default=dict(
            lr=head_lr, weight_decay=0.01, schedule="warmup_linear", warmup_fraction=0.1,
            clip_norm=1.0,
        ),
        groups={} if fit_only else {"head": {"lr": head_lr}, label: {"lr": lr}},
    )  # fmt: skip
    c.train = dict(
        batch_size=batch,
        epochs=0.0 if fit_only else float(arg.epochs or EPOCHS["few" if few else "all"]),
        log_every=log_every,
        eval_every=0 if fit_only else eval_every,
        eval_batch_size=128,
        # text: sort lengths in chunks (less padding); images are all one size, and streamed
        # text pads every batch to max_length
        length_grouping=0
        if few or data.get("kind") != "text" or data.get("streaming")
        else length_grouping,
        select_best=None if fit_only else "pearson" if regression else "accuracy",
        early_stopping=0 if fit_only else PATIENCE,
        refit=few and not fit_only,  # few labels: train again on train + val, chosen epochs
    )
    if eval_every_epochs is not None:
        c.train.eval_every_epochs = 0.0 if fit_only else float(eval_every_epochs)
    c.data = dict(data, val_fraction=val_fraction(arg.method, few))
    c.mesh = dict(axes=[("data", -1)], rules="dp")
    c.checkpoint = dict(every=0, keep=1)  # one checkpoint, at the end (best/ holds the choice)
    if arg.wise and not fit_only:  # WiSE-FT curve at the end (adapt.harness.wise): 11 alphas
        c.wise_ft = dict(alphas=[round(0.1 * i, 1) for i in range(11)])
    if arg.export:  # adapt's native format keeps any pooling (HF's BERT head is the pooler's)
        c.export = dict(native=True)
    if arg.smoke:  # seconds, for tests: a few steps on a few examples
        c.train.update(epochs=0.0 if fit_only else 1.0, batch_size=8, eval_batch_size=16,
                       log_every=1, eval_every=0 if fit_only else 2, length_grouping=0)  # fmt: skip
        if eval_every_epochs is not None:
            c.train.eval_every_epochs = 0.0
        smoke_data = {k: v for k, v in c.data.to_dict().items() if k != "examples_per_class"}
        smoke_data.update(max_examples=48, eval_max_examples=32,
                          val_fraction=0.0 if fit_only else 0.25)  # fmt: skip
        if smoke_data.get("kind") == "text":
            smoke_data.update(max_length=32, bucket_boundaries=(32,))
        c.data = smoke_data
    return c
