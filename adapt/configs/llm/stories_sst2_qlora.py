r"""QLoRA vs bfloat16 LoRA: stories260K (children's stories) adapted to movie-review language.

  python -m experiments.finetune --config=configs/llm/stories_sst2_qlora.py:method=qlora \
      --workdir=workdirs/stories_sst2_qlora

Expected (CPU, about a minute per run): held-out NLL on the 872 SST-2 dev sentences falls from
~4.9 nats/token (the base model has only seen TinyStories) to 2.886 with bfloat16 LoRA and
2.908 with QLoRA after 200 steps: QLoRA within 0.8% of LoRA (tests/test_qlora.py runs both and
asserts the issue's 2%). Same recipe for both, QLoRA's: LoRA rank 8 on every linear layer,
bfloat16 compute; ``method=lora`` keeps the frozen base in bfloat16 (2 bytes/weight),
``method=qlora`` stores it as NF4 with double quantisation (0.52 bytes/weight) and dequantises
each layer inside the jitted step.

Why this data and not the TinyStories sample: on the 5 vendored stories both runs memorise the
text (NLL ~1.5 -> 0.025), and a relative gap between two near-zero losses measures nothing but
the quantisation noise floor (QLoRA ends 0.0012 nats = 4.9% above LoRA there). A real domain
shift with held-out evaluation is what QLoRA claims to match. Data: the first 20,000 sentences of
the vendored SST-2 train split, one document each (labels unused), packed into 128-token rows.
Arguments: method (qlora | lora), steps, seed, smoke.
"""

import ml_collections

from adapt.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, method="qlora", steps=200, seed=0, smoke=False)
    c = ml_collections.ConfigDict()
    c.seed = arg.seed
    c.task = "causal_lm"
    c.model = dict(kind="llama2c", path="third_party/stories260K/stories260K.bin", dtype="bfloat16")
    if arg.method == "lora":
        c.model.frozen_dtype = "bfloat16"
    c.method = dict(name=arg.method, options={"rank": 8, "alpha": 16, "targets": "all_linear"})
    c.optim = dict(
        default=dict(
            lr=3e-3, weight_decay=0.0, schedule="warmup_cosine", warmup_steps=arg.steps // 10
        )
    )
    c.train = dict(
        batch_size=8,
        steps=arg.steps,
        log_every=max(arg.steps // 20, 1),
        eval_every=0,
        eval_batch_size=32,
    )
    c.data = dict(
        kind="lm",
        source="third_party/sst2/train.tsv",
        eval_source="third_party/sst2/dev.tsv",
        text_column="sentence",
        max_documents=20000,
        tokenizer="third_party/stories260K/tok512.model",
        seq_len=128,
    )
    c.mesh = dict(axes=[("data", -1)], rules="dp")
    c.checkpoint = dict(every=max(arg.steps // 4, 1), keep=2)
    if arg.smoke:
        c.train.update(steps=4, log_every=2)
        c.optim.default.warmup_steps = 1
        c.checkpoint.every = 2
        c.data.max_documents = 200
    return c
