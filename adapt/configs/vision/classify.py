r"""Image classification on your own data, with a Hugging Face image checkpoint and any method.

  python -m experiments.finetune --workdir=workdirs/my_images \
      --config=configs/vision/classify.py:model=path/to/vit_checkpoint,train=my_images.npz,method=lora

  python -m experiments.finetune --workdir=workdirs/beans_lora --config=configs/vision/classify.py:\
model=google/vit-base-patch16-224-in21k,train=tfds:beans,eval_split=test,data_dir=~/tfds,method=lora

Expected: whatever your data allow; the run prints a data summary first (examples per split,
classes and their names) and the workdir holds results.json, labels.json and predictions.jsonl.
The recipe is configs/text/minilm.py's (configs/recipe.py: the head started from a logistic
regression on the frozen features, a validation split carved from the training images for
best-checkpoint selection and early stopping, budgets in epochs, any ``method``).

Arguments:
- ``train``: an ``.npz`` file holding ``images`` (uint8 N x H x W [x C]) and ``labels``, a folder
  of IDX files (the MNIST layout: ``<split>-images-idx3-ubyte[.gz]``), or ``tfds:<name>``, a
  TensorFlow Datasets data set prepared under ``data_dir`` (``image`` and ``label`` features;
  read without TensorFlow, never downloaded; its class names are kept);
- ``eval``: a held-out source of the same kind; without it a folder or ``tfds:`` source gives its
  ``eval_split`` (test), and a single ``.npz`` holds out ``eval_fraction`` (0.2), stratified;
- ``model``: a local Hugging Face folder, a packaged name or a hub name of an image classifier
  family adapt converts (ViT); its classification architecture gets a new head;
- ``image_size`` (0: the checkpoint's ``config.json`` value, else 224) and ``resize``
  (``resize``: bilinear; ``pad``: zero-pad smaller images); images take the checkpoint's
  channel count (grey images are replicated) and its ``preprocessor_config.json`` mean and std
  (0.5 and 0.5 without one, as ViT's);
- ``labels`` (``"cat|dog"``) names the classes in id order; ``per_class``, ``method`` (lora),
  ``epochs``, ``lr_scale``, ``head_init``, ``wise``, ``export``, ``seed``, ``batch`` (32),
  ``smoke`` as in configs/text/classify.py;
- ``streaming``: read the training images batch by batch (a ``tfds:`` set, or ``.array_record``
  files of JSON records with ``image`` and ``label``), never whole (adapt.data.streaming).
"""

import json
from pathlib import Path

from adapt.config import ConfigError, parse_arg
from adapt.configs.recipe import check, classifier


def _checkpoint_files(model: str) -> tuple[dict, dict]:
    """config.json and preprocessor_config.json of a local checkpoint folder ({} otherwise: a
    packaged or hub name is resolved when the run loads it)."""
    folder = Path(model).expanduser()
    read = lambda name: json.loads((folder / name).read_text()) if (folder / name).is_file() else {}
    return read("config.json"), read("preprocessor_config.json")


def get_config(arg=None):
    arg = parse_arg(
        arg, train="", eval="", train_split="train", eval_split="test", eval_fraction=0.2,
        labels="", model="", image_size=0, resize="resize", data_dir="", method="lora",
        per_class=0, epochs=0.0, lr_scale=1.0, head_init="probe", batch=32, wise=False,
        export=False, seed=0, smoke=False, streaming=False,
    )  # fmt: skip
    if not arg.train or not arg.model:
        raise ConfigError(
            "configs/vision/classify.py needs model=<image checkpoint> and train=<.npz, IDX "
            "folder or tfds:name>; see the file's docstring"
        )
    check(arg)
    config, preprocessor = _checkpoint_files(arg.model)
    size = arg.image_size or config.get("image_size", 224)
    data = dict(
        kind="image",
        source=arg.train,
        train_split=arg.train_split,
        eval_split=arg.eval_split,
        preprocessing=dict(
            image_size=size,
            resize=arg.resize,
            channels=config.get("num_channels", 3),
            mean=tuple(preprocessor.get("image_mean", (0.5,))),
            std=tuple(preprocessor.get("image_std", (0.5,))),
        ),
    )
    if arg.eval:
        data["eval_source"] = arg.eval
    elif arg.train.endswith(".npz"):
        data["eval_fraction"] = arg.eval_fraction
    if arg.labels:
        data["label_names"] = arg.labels.split("|")
    if arg.data_dir:
        data["data_dir"] = str(Path(arg.data_dir).expanduser())
    if arg.streaming:
        data["streaming"] = True
    few = arg.per_class > 0
    if few:
        data["examples_per_class"] = arg.per_class
    model = dict(kind="hf", path=arg.model, architecture="classifier")
    return classifier(
        arg, model=model, data=data, batch=arg.batch, few=few, eval_every_epochs=1.0 if few else 0.5,
        log_every=25,
    )  # fmt: skip
