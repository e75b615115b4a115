"""Exceptions that carry a message meant for the user (the CLI prints them without a traceback)."""


class AttnbenchError(Exception):
    """Base class: the message says what is wrong and what would be valid."""

    exit_code = 1


class BadInputError(AttnbenchError):
    """Bad user input (YAML, flag, plugin name, data file). The CLI exits with code 2."""

    exit_code = 2


class PluginError(AttnbenchError):
    """A plugin misbehaved (duplicate name, wrong base class, failed import)."""
