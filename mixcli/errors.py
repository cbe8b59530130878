"""User-facing errors: the CLI prints their message and exits with code 2, without a traceback."""
from __future__ import annotations

import difflib


class MixcliError(Exception):
    """Bad input (experiment file, option, plugin name, output directory...). The message says what to fix."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or the list of choices when nothing is close."""
    choices = sorted(str(c) for c in choices)
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if len(choices) <= 12:
        return f" (expected one of: {', '.join(choices)})"
    return ""


class RunFailed(Exception):
    """A run that cannot go on (e.g. its loss diverged): recorded ``failed`` with this message; the sweep
    goes on."""
