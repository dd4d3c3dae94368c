"""Value types for command-line flags that every subcommand shares.

Python's int() takes more than a number as a person types one: `8_000`, `+8000`, ` 8000 `,
and digits of any script (fullwidth ones, say). A flag value is plain ASCII digits, or
argparse names the flag and the value in its one-line error, as for any other bad value."""

from __future__ import annotations


def decimal(text: str) -> int:
    """`text` as a non-negative integer of ASCII digits only; ValueError otherwise (argparse
    turns a type's ValueError into its "invalid <type name> value" error)."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)


def port(text: str) -> int:
    value = decimal(text)
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


port.__name__ = "port (0 to 65535)"  # argparse: "invalid port (0 to 65535) value: '99999'"
