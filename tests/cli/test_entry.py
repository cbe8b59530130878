"""The console script: `mixcli` and `mixcli --help` print the overview without importing typer, rich or
torch, and the overview lists exactly the app's commands with their help."""
from __future__ import annotations

import subprocess
import sys

from mixcli.cli import app
from mixcli.entry import overview, render


def test_the_overview_lists_every_command_of_the_app_with_its_help():
    app_help, commands = overview()
    assert app_help == app.info.help
    registered = {(c.name or c.callback.__name__.replace("_", "-")):
                  " ".join((c.callback.__doc__ or "").split("\n\n")[0].split()) for c in app.registered_commands}
    assert dict(commands) == registered and len(commands) == len(registered) >= 10
    text = render(80)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert all(f"│ {name} " in text for name, _ in commands)


def test_help_imports_neither_typer_nor_torch_and_other_commands_reach_the_cli():
    probe = ("import sys; sys.argv = ['mixcli'] + sys.argv[1:]\n"
             "from mixcli.entry import main\n"
             "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
             "print('LOADED', sorted(m for m in ('typer', 'rich', 'torch') if m in sys.modules), code)\n")
    for args in ([], ["--help"]):
        r = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "Usage: mixcli" in r.stdout and "LOADED [] 0" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-c", probe, "list", "nosuchkind"], capture_output=True, text=True,
                       timeout=120)
    assert "unknown plugin kind 'nosuchkind'" in r.stdout + r.stderr
    assert "'typer'] 2" in r.stdout  # the full CLI ran and exited 2
