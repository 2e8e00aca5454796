"""``python -m experiments.sweep`` in a checkout: the ``adapt-sweep`` command of adapt/cli/sweep.py."""

from adapt.cli.sweep import run

if __name__ == "__main__":
    run()
