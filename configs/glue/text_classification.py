"""Shared recipe for text classification on all-MiniLM-L6-v2: method defaults and the config
skeleton that ``sst2_minilm.py`` and ``banking77_minilm.py`` fill in (not a runnable config).

``base_config`` also reads two optional flags of the caller's arguments: ``wise`` (evaluate the
WiSE-FT curve over alphas 0, 0.1, ..., 1 at the end; see adapt/harness/wise.py) and ``export``
(write the trained model to ``<workdir>/export_hf``, the start of a later run)."""

from __future__ import annotations

import ml_collections

# Per-method optimizer groups (label -> settings) and method options. Learning rates follow the
# usual ranges for each method on BERT-sized encoders: full fine-tuning wants a small backbone LR,
# LoRA/adapters/IA3 around 1e-3, prompt tuning a very large one.
METHODS = {
    "full": ({"backbone": {"lr": 5e-5}}, {}),
    "linear_probe": ({}, {}),
    "bitfit": ({"bias": {"lr": 1e-3}}, {}),
    "lora": ({"lora": {"lr": 1e-3}}, {"rank": 8, "alpha": 16}),
    "dora": ({"lora": {"lr": 1e-3}}, {"rank": 8, "alpha": 16}),
    "ia3": ({"ia3": {"lr": 5e-3}}, {}),
    "houlsby": ({"adapter": {"lr": 1e-3}}, {"bottleneck": 64}),
    "pfeiffer": ({"adapter": {"lr": 1e-3}}, {"bottleneck": 64}),
    "prefix": ({"prefix": {"lr": 1e-3}}, {"num_tokens": 10, "mlp_hidden": 256}),
    "prompt": ({"prompt": {"lr": 3e-2}}, {"num_tokens": 16}),
    "ptuning_v2": ({"prefix": {"lr": 5e-3}}, {"num_tokens": 10}),
    "gradual_unfreezing": ({"backbone": {"lr": 5e-5}}, {}),
    "lp_ft": ({"backbone": {"lr": 5e-5}}, {}),
    "scratch": ({"backbone": {"lr": 5e-4}}, {}),
}
WISE_ALPHAS = [round(0.1 * i, 1) for i in range(11)]
RECIPE_ONLY = {"full", "linear_probe", "bitfit", "gradual_unfreezing", "lp_ft", "scratch"}


def base_config(arg, *, data: dict, steps: int, head_lr: float) -> ml_collections.ConfigDict:
    if arg.method not in METHODS:
        raise ValueError(f"unknown method {arg.method!r}; choose from {sorted(METHODS)}")
    groups, options = METHODS[arg.method]
    c = ml_collections.ConfigDict()
    c.seed = arg.seed
    c.task = "classification"
    c.model = dict(
        kind="hf",
        path="all-MiniLM-L6-v2",
        architecture="BertForSequenceClassification",
        init="scratch" if arg.method == "scratch" else "pretrained",
        dtype="float32",
    )
    c.method = dict(name=arg.method, options=options)
    c.optim = dict(
        default=dict(
            lr=head_lr,
            weight_decay=0.01,
            schedule="warmup_linear",
            warmup_steps=steps // 10,
            clip_norm=1.0,
        ),
        groups={"head": {"lr": head_lr}, **groups},
    )
    c.train = dict(
        batch_size=32,
        steps=steps,
        log_every=max(steps // 20, 1),
        eval_every=0,
        eval_batch_size=128,
        length_grouping=50,  # sort lengths within 50-batch chunks: 4x less padding on SST-2
    )
    c.data = data
    c.mesh = dict(axes=[("data", -1)], rules="dp")
    c.checkpoint = dict(every=max(steps // 4, 1), keep=2)
    if arg.get("wise", False):  # WiSE-FT curve at the end (adapt.harness.wise): 11 alphas
        c.wise_ft = dict(alphas=WISE_ALPHAS)
    if arg.get("export", False):  # export_hf/ in the workdir: the start of a later run
        c.export = dict(hf=True)
    if arg.smoke:  # seconds, for tests: a few steps on a few examples
        c.train.steps = 4
        c.train.batch_size = 8
        c.train.log_every = 2
        c.train.eval_batch_size = 16
        c.optim.default.warmup_steps = 1
        c.checkpoint.every = 2
        c.data.max_examples = 64
        if "examples_per_class" in c.data:
            c.data.examples_per_class = 2
        c.data.eval_max_examples = 32
        c.data.max_length = 32
        c.data.bucket_boundaries = (32,)  # one padded shape: one compile per step function
    return c
