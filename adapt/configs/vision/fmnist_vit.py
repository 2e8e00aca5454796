r"""A small ViT on Fashion-MNIST: pretrained by adapt on classes 0-4, then transferred to 5-9.

  python -m experiments.finetune --config=configs/vision/fmnist_vit.py:stage=pretrain \
      --workdir=workdirs/fmnist_vit_pretrain
  python -m experiments.finetune --config=configs/vision/fmnist_vit.py:stage=transfer,method=lora,\
per_class=10,pretrained=workdirs/fmnist_vit_pretrain/export_hf --workdir=workdirs/fmnist_vit_lora_10

The pretraining stage trains from scratch on the five source classes and exports a Hugging Face
ViT directory; the transfer stage loads it (any method) with a new 5-way head for the target
classes, or trains the same architecture from scratch (method=scratch).
Arguments: stage, method, per_class, steps, pretrained, seed, smoke.
"""

import ml_collections

from adapt.config import parse_arg

VIT = dict(image_size=28, patch_size=7, num_channels=1, hidden_size=64, num_hidden_layers=4,
           num_attention_heads=4, intermediate_size=128, hidden_dropout_prob=0.0,
           attention_probs_dropout_prob=0.0)  # fmt: skip
METHOD_GROUPS = {
    "full": {"backbone": {"lr": 1e-3}},
    "scratch": {"backbone": {"lr": 1e-3}},
    "linear_probe": {},
    "lora": {"lora": {"lr": 3e-3}},
    "bitfit": {"bias": {"lr": 3e-3}},
}


def get_config(arg=None):
    arg = parse_arg(
        arg,
        stage="pretrain",
        method="full",
        per_class=0,
        steps=600,
        pretrained="",
        seed=0,
        smoke=False,
    )
    if arg.stage not in ("pretrain", "transfer"):
        raise ValueError(f"stage must be pretrain or transfer, got {arg.stage!r}")
    c = ml_collections.ConfigDict()
    c.seed = arg.seed
    c.task = "classification"
    source_classes, target_classes = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
    if arg.stage == "pretrain":
        c.model = dict(kind="vit", config=VIT, init="scratch")
        c.method = dict(name="scratch")
        classes = source_classes
        c.export = dict(hf=True)
    else:
        if arg.method not in METHOD_GROUPS:
            raise ValueError(f"unknown method {arg.method!r}; choose from {sorted(METHOD_GROUPS)}")
        if arg.method == "scratch":
            c.model = dict(kind="vit", config=VIT, init="scratch")
        else:
            if not arg.pretrained:
                raise ValueError("stage=transfer needs pretrained=<dir of the exported ViT>")
            c.model = dict(
                kind="hf",
                path=arg.pretrained,
                architecture="ViTForImageClassification",
                new_head=True,  # the export's 5-way head is for classes 0-4, not 5-9
            )
        c.method = dict(
            name=arg.method, options={"rank": 8, "alpha": 16} if arg.method == "lora" else {}
        )
        classes = target_classes
    c.optim = dict(
        default=dict(
            lr=1e-3, weight_decay=1e-4, schedule="warmup_cosine", warmup_steps=arg.steps // 20
        ),
        groups={"head": {"lr": 3e-3}, **METHOD_GROUPS.get(arg.method, {})},
    )
    c.train = dict(
        batch_size=64,
        steps=arg.steps,
        log_every=max(arg.steps // 20, 1),
        eval_every=0,
        eval_batch_size=500,
    )
    c.data = dict(
        kind="image",
        source="third_party/fashion_mnist",
        train_split="train",
        eval_split="test",
        classes=classes,
        preprocessing=dict(mean=(0.286,), std=(0.353,)),
        augmentation=dict(crop_padding=2, horizontal_flip=True),
    )
    if arg.per_class:
        c.data.examples_per_class = arg.per_class
        # never a batch over half the labelled set (10 per class x 5 classes = 50 -> 24)
        c.train.batch_size = min(c.train.batch_size, max(arg.per_class * len(classes) // 16 * 8, 8))
    c.mesh = dict(axes=[("data", -1)], rules="dp")
    c.checkpoint = dict(every=max(arg.steps // 4, 1), keep=2)
    if arg.smoke:
        c.train.update(steps=4, batch_size=16, log_every=2, eval_batch_size=64)
        c.optim.default.warmup_steps = 1
        c.checkpoint.every = 2
        c.data.examples_per_class = 4
        c.data.eval_max_examples = 64
    if arg.method == "linear_probe":  # fitted to convergence on cached features: no steps
        c.train.steps = 0
        c.optim.default.warmup_steps = 0
        c.checkpoint.every = 0
    return c
