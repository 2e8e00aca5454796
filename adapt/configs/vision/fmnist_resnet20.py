r"""Fashion-MNIST with the CIFAR-10 ResNet-20 (akamaster, 91.8% on CIFAR-10) as the starting point.

  python -m experiments.finetune --config=configs/vision/fmnist_resnet20.py:method=full,per_class=100 \
      --workdir=workdirs/fmnist_resnet20_full_100

28x28 grey images are zero-padded to 32x32, replicated to 3 channels and normalised with the
CIFAR-10 statistics the network was trained with; random crops and flips augment training.
per_class labelled images per class from the vendored 600-per-class train slice; evaluated on the
full 10,000-image test set. Methods: scratch (same architecture, random init), linear_probe
(a logistic regression fitted to convergence on the frozen network's pooled features, no
steps), full, bitfit, partial (last stage + head), lora (rank 4 on every convolution of the
residual blocks, PEFT's Conv2d LoRA: a k x k down-projection and a 1 x 1 up-projection; the
BatchNorm statistics update as in PyTorch's train mode). Arguments: method, per_class, steps, seed,
smoke.
"""

import ml_collections

from adapt.config import parse_arg

# LoRA at 3x full fine-tuning's rate, as configs/vision/fmnist_vit.py (chosen before any run)
LR = {"scratch": 3e-3, "linear_probe": 1e-2, "full": 1e-3, "bitfit": 3e-3, "partial": 1e-3,
      "lora": 3e-3}  # fmt: skip


def get_config(arg=None):
    arg = parse_arg(arg, method="full", per_class=100, steps=600, seed=0, smoke=False)
    if arg.method not in LR:
        raise ValueError(f"unknown method {arg.method!r}; choose from {sorted(LR)}")
    c = ml_collections.ConfigDict()
    c.seed = arg.seed
    c.task = "classification"
    c.model = dict(
        kind="resnet_cifar",
        path="third_party/resnet20_cifar10",
        init="scratch" if arg.method == "scratch" else "pretrained",
        # LoRA updates the BatchNorm statistics, as PyTorch + PEFT in train mode does
        train_batch_stats=arg.method not in ("linear_probe", "bitfit"),
        new_head=True,  # CIFAR-10's head has the right shape but the wrong classes
    )
    c.method = dict(name=arg.method)
    if arg.method == "lora":  # rank 4 on the 18 block convolutions: 9% of the weights
        c.method.options = dict(rank=4, alpha=8)
    if arg.method == "partial":
        c.method.trainable = r"layer3_.*"
    c.optim = dict(
        default=dict(
            lr=LR[arg.method],
            weight_decay=1e-4,
            schedule="warmup_cosine",
            warmup_steps=arg.steps // 20,
        ),
        groups={},
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
        label_names=[
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
        preprocessing=dict(
            image_size=32,
            resize="pad",
            channels=3,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
        ),
        augmentation=dict(crop_padding=4, horizontal_flip=True),
    )
    if arg.per_class:
        c.data.examples_per_class = arg.per_class
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
