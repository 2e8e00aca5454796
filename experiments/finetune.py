"""``python -m experiments.finetune`` in a checkout: the ``adapt-finetune`` command of adapt/cli/finetune.py."""

from adapt.cli.finetune import run

if __name__ == "__main__":
    run()
