"""The argument parser of every OTS command line (``ots`` and its verbs, ``python -m pipelines.serving``,
``python -m pipelines.registry``): ``--help`` states each option's default. Standard library only (it is imported
before any verb's heavy modules)."""

from __future__ import annotations

import argparse

__all__ = ["ArgumentParser", "DefaultsHelpFormatter"]


def _shows_default(action: argparse.Action) -> bool:
    d = action.default
    return bool(action.option_strings) and not (d is None or d is False or d is argparse.SUPPRESS or d == [])


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` names every option's default (argparse's ArgumentDefaultsHelpFormatter without its noise: no
    "default: None"/"False", nothing added where the help text already states its default)."""

    def _format_action(self, action):
        if not action.help and _shows_default(action):
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or not _shows_default(action):
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """The parser of every OTS command line (``ots`` and its verbs, ``python -m pipelines.*``): ``--help`` shows
    the defaults; sub-commands inherit it (``add_subparsers`` builds parsers of the parent's class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
