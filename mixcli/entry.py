"""The ``mixcli`` console script. ``mixcli`` and ``mixcli --help`` print the command overview without
importing typer, rich or torch (a fraction of a second instead of about a second): the overview is read
from :mod:`mixcli.cli`'s source (the app's help and each command's name and first docstring paragraph),
so it cannot drift from the commands. Everything else goes to :func:`mixcli.cli.main`."""
from __future__ import annotations

import ast
import os
import sys
import textwrap
from pathlib import Path

CLI = Path(__file__).with_name("cli.py")


def overview() -> tuple[str, list[tuple[str, str]]]:
    """(the app's help, [(command, its first docstring paragraph as one line)]) from cli.py's source."""
    tree = ast.parse(CLI.read_text(encoding="utf-8"))
    app_help, commands = "", []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                getattr(node.value.func, "attr", "") == "Typer":
            for kw in node.value.keywords:
                if kw.arg == "help":
                    app_help = ast.literal_eval(kw.value)
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "command":
                    name = ast.literal_eval(dec.args[0]) if dec.args else node.name.replace("_", "-")
                    doc = (ast.get_docstring(node) or "").split("\n\n")[0]
                    commands.append((name, " ".join(doc.split())))
    return app_help, commands


def render(width: int | None = None) -> str:
    width = max(60, min(width or _columns(), 120))
    app_help, commands = overview()
    inner = width - 4
    lines = ["", " Usage: mixcli [OPTIONS] COMMAND [ARGS]...", ""]
    lines += [" " + t for t in textwrap.wrap(app_help, width - 2)] + [""]

    def box(title: str, rows: list[tuple[str, str]]) -> None:
        lines.append("╭─ " + title + " " + "─" * (width - len(title) - 5) + "╮")
        key = max(len(k) for k, _ in rows) + 2
        for k, text in rows:
            wrapped = textwrap.wrap(text, inner - key) or [""]
            for i, part in enumerate(wrapped):
                lines.append("│ " + (k if i == 0 else "").ljust(key) + part.ljust(inner - key) + " │")
        lines.append("╰" + "─" * (width - 2) + "╯")

    box("Options", [("--help", "Show this message and exit.")])
    box("Commands", commands)
    lines.append(" `mixcli COMMAND --help` for a command's options.")
    return "\n".join(lines) + "\n"


def _columns() -> int:
    try:
        return int(os.environ.get("COLUMNS") or os.get_terminal_size().columns)
    except (OSError, ValueError):
        return 80


def main() -> None:
    if sys.argv[1:] in ([], ["--help"]):
        sys.stdout.write(render())
        return
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
