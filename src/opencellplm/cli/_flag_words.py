"""Library messages in the words of the command line: an API argument the running command has as a flag is
written as that flag (``overwrite=True`` becomes ``--overwrite``)."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection

#: An API argument named in a library message (``layer=``, ``overwrite=True (--overwrite)``, ``precision='bf16'``).
_API_ARGUMENT = re.compile(
    r"(?<![\w-])([a-z][a-z0-9_]*)=(True\b|\.\.\.|'[^']*'|\"[^\"]*\"|[\w.]+)?(?: \((--[a-z0-9-]+)\))?"
)
_API_NAME = re.compile(r"(?<![\w-])([a-z][a-z0-9_]*) \((--[a-z0-9-]+)\)")


def in_flag_words(text: str, flags: Collection[str]) -> str:
    """``text`` with each API argument that is one of ``flags`` written as the flag: ``overwrite=True`` and
    ``overwrite=True (--overwrite)`` become ``--overwrite``, ``layer=`` ``--layer``, ``precision='bf16'``
    ``--precision bf16``, ``key_added (--key-added)`` ``--key-added``; other arguments are left as they are.
    The library speaks to Python callers, the command line to its users."""

    quotes = "'\""

    def flag(match: re.Match) -> str:
        name, value, named = match.groups()
        option = "--" + name.replace("_", "-")
        if option not in flags or value == "False" or (named and named != option):
            return match.group(0)
        return option if value in (None, "True", "...") else f"{option} {value.strip(quotes)}"

    def named(match: re.Match) -> str:  # "key_added (--key-added)": the name, then its flag
        name, option = match.groups()
        return option if option == "--" + name.replace("_", "-") and option in flags else match.group(0)

    return _API_NAME.sub(named, _API_ARGUMENT.sub(flag, text))


class _FlagWords(logging.Filter):
    """Writes the records shown by the command line in the flag words of the command that runs."""

    flags: Collection[str] = ()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.flags:
            record.msg, record.args = in_flag_words(record.getMessage(), self.flags), ()
        return True


_FLAG_WORDS = _FlagWords()
