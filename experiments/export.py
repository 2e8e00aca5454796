"""``python -m experiments.export`` in a checkout: the ``adapt-export`` command of adapt/cli/export.py."""

from adapt.cli.export import run

if __name__ == "__main__":
    run()
