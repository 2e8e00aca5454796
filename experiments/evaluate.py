"""``python -m experiments.evaluate`` in a checkout: the ``adapt-evaluate`` command of adapt/cli/evaluate.py."""

from adapt.cli.evaluate import run

if __name__ == "__main__":
    run()
