"""The command-line entry points, installed as console scripts with the package:
``adapt-finetune`` (:mod:`adapt.cli.finetune`), ``adapt-evaluate``, ``adapt-export``,
``adapt-convert`` and ``adapt-sweep``. In a checkout ``python -m experiments.<name>`` runs the
same. The top layer: it may import the harness and the studies; nothing imports it.

``--config`` takes a config file's path, or the name of a config shipped in
:mod:`adapt.configs` (``text/classify.py``, ``configs/text/minilm.py`` or ``text/minilm``),
so the commands work from any directory with an installed wheel.
"""
