"""The shipped configs (big_vision-style ``get_config(arg)`` files): ``text/`` (classification
on any encoder, the MiniLM recipe of the studies), ``vision/``, ``llm/`` and the studies'
``sweeps/``. ``--config`` finds them by name from any directory (``text/classify.py`` or
``configs/text/classify.py``); a checkout also has ``configs/`` as a link to this folder."""
