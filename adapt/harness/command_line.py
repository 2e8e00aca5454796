"""What every entry point (:mod:`adapt.cli`) shares: config files with ``--config.*``
overrides, and adapt's errors as one line and exit status 2.

    adapt-finetune --config=configs/text/minilm.py:dataset=sst2,method=lora \\
        --config.train.steps=200 --config.optim.groups.lora.lr=3e-4 --workdir=...

``--config=path[:arg]`` names a file whose ``get_config(arg)`` returns the run's config;
``--config.<key path>=<value>`` overrides any key of :class:`~adapt.config.RunConfig`
(every default is there, so a key the file does not mention can still be set). Both are
checked before anything runs; a misspelt key names the nearest known one.

:func:`main` runs an absl ``main`` so that an :class:`~adapt.errors.AdaptError` (a bad config,
data file, checkpoint, adapter, Hugging Face config or flag) prints ``error: <one line>`` and
exits with 2, without a traceback (``--verbose`` shows it); SIGTERM preemption exits with
:data:`~adapt.errors.PREEMPTED_EXIT_CODE` (75). Anything else is a bug in adapt and keeps its
traceback.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from adapt.config import ConfigError, apply_overrides, load_config_file
from adapt.errors import USAGE_EXIT_CODE, AdaptError, one_line

_OVERRIDES: list[tuple[str, str]] = []


def split_overrides(argv: Sequence[str], flag: str = "config") -> tuple[list[str], list]:
    """``(argv without --<flag>.<key>=<value> items, [(key, value), ...])``; the
    ``--<flag>.<key> <value>`` form is accepted too."""
    rest, overrides = [], []
    prefix = f"--{flag}."
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith(prefix):
            key, sep, value = item[len(prefix) :].partition("=")
            if not sep:
                if i + 1 >= len(items):
                    raise ConfigError(f"{item} needs a value ({item}=<value>)")
                value = items[i + 1]
                i += 1
            overrides.append((key, value))
        else:
            rest.append(item)
        i += 1
    return rest, overrides


def overrides() -> list[tuple[str, str]]:
    """The ``--config.*`` overrides of this process's command line."""
    return list(_OVERRIDES)


def config_from_flag(spec: str | None, extra: Sequence[tuple[str, str]] = ()) -> dict:
    """The run config of ``--config=path[:arg]`` with the command line's ``--config.*``
    overrides applied and every default filled in (a plain dict)."""
    if not spec:
        raise ConfigError("--config is required: --config=<config file>[:<arguments>]")
    path, _, arg = spec.partition(":")
    raw = load_config_file(path, arg or None)
    return apply_overrides(raw, [*_OVERRIDES, *extra])


def main(run: Callable[[list[str]], Any], *, flag: str = "config", doc: str | None = None) -> None:
    """``absl.app.run(run)`` with ``--<flag>.*`` overrides collected first and adapt's errors
    turned into one line and exit status 2. ``doc`` is what ``--help`` prints above the flags
    (absl prints the ``__main__`` module's docstring: a console script's wrapper has none)."""
    from absl import app, flags

    if doc is not None:
        sys.modules["__main__"].__doc__ = doc

    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool("verbose", False, "Show the traceback of adapt's own errors.")

    def parser(argv: list[str]) -> list[str]:
        try:
            rest, found = split_overrides(argv, flag)
        except ConfigError as e:
            _fail(e, verbose=False)
        _OVERRIDES[:] = found
        try:
            return flags.FLAGS(rest)
        except flags.Error as e:
            print(f"error: {one_line(e)} (see --help)", file=sys.stderr)
            sys.exit(USAGE_EXIT_CODE)

    def guarded(argv: list[str]) -> Any:
        try:
            return run(argv)
        except AdaptError as e:
            _fail(e, verbose=flags.FLAGS.verbose)

    app.run(guarded, flags_parser=parser)


def _fail(error: BaseException, *, verbose: bool) -> None:
    if verbose:
        traceback.print_exception(error)
    print(f"error: {one_line(error)}", file=sys.stderr)
    sys.exit(USAGE_EXIT_CODE)


__all__ = ["config_from_flag", "load_config_file", "main", "overrides", "split_overrides"]
