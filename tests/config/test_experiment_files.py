"""Every experiment file shipped in experiments/ passes validate (offline: datasets are not downloaded to
validate; models are built on the meta device), so a renamed option or method never leaves a file broken."""
from __future__ import annotations

from pathlib import Path

import pytest

FILES = sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.yaml"))


def test_there_are_experiment_files():
    assert len(FILES) >= 10


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_experiment_file_validates(cli, path):
    code, text = cli("validate", path)
    assert code == 0, text
    assert "is valid" in text
