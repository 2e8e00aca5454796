"""``python -m experiments.convert`` in a checkout: the ``adapt-convert`` command of adapt/cli/convert.py."""

from adapt.cli.convert import run

if __name__ == "__main__":
    run()
