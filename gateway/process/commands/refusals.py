"""What a command refuses, in one line for the operator: exit status 2 for a mistake in the
command (CommandError, a ConfigError), 1 when what it names is not there (NotFound). Light
on imports: `postern`'s entry point catches them before any command's module is loaded."""

from __future__ import annotations

from gateway.errors import ConfigError


class CommandError(ConfigError):
    """The operation was refused; the message is the one line the operator sees."""


class NotFound(CommandError):
    """What the command names does not exist: exit status 1, not 2 (no mistake in the
    command's form; a script may tell the two apart)."""
