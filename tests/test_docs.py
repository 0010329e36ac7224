"""The documentation's examples run: the README's quick start and the docstring examples."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def test_readme_quick_start_runs_as_written() -> None:
    text = (ROOT / "README.md").read_text()
    test = doctest.DocTestParser().get_doctest(text, {}, "README.md", str(ROOT / "README.md"), 0)
    assert len(test.examples) >= 5, "the README's quick start should be a >>> block"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test)
    assert runner.failures == 0


def _modules_with_examples() -> list[str]:
    names = []
    for folder, package in ((ROOT / "disco_score", "disco_score"), (ROOT / "integrations", "disco_score.integrations")):
        for path in sorted(folder.glob("*.py")):
            if ">>>" in path.read_text():
                names.append(package if path.stem == "__init__" else f"{package}.{path.stem}")
    return names


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=FLAGS, verbose=False)
    assert result.attempted > 0 and result.failed == 0
