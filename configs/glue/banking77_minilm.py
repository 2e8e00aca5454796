r"""Banking77 intent detection (77 classes) on all-MiniLM-L6-v2 with any adaptation method.

  python -m experiments.finetune --config=configs/glue/banking77_minilm.py:method=lora,per_class=30 \
      --workdir=workdirs/banking77_lora_50

Few-label budgets: per_class labelled examples of each intent (at most 35, the smallest intent's
count; 0 = all 10,003); evaluated on the
full test set (3,080, 40 per intent). Arguments: method, per_class, steps, wise (the WiSE-FT curve
over alpha), seed, smoke.
"""

from adapt.harness.config import parse_arg
from configs.glue.text_classification import base_config


def get_config(arg=None):
    arg = parse_arg(arg, method="lora", per_class=30, steps=600, wise=False, seed=0, smoke=False)
    data = dict(
        kind="text",
        source="third_party/banking77",
        train_split="train",
        eval_split="test",
        text_column="text",
        label_column="category",
        label_names_file="third_party/banking77/categories.json",
        max_length=64,
        bucket_boundaries=(16, 32, 64),
    )
    if arg.per_class:
        data["examples_per_class"] = arg.per_class
    return base_config(arg, data=data, steps=arg.steps, head_lr=3e-3)
