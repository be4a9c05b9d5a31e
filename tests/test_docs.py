"""The examples in docs/*.md and in the package's docstrings are run, so the documentation stays true."""

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import quanta

DOCS = sorted((Path(__file__).parent.parent / "docs").glob("*.md"))
MODULES = sorted(m.name for m in pkgutil.walk_packages(quanta.__path__, "quanta."))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_doc_examples_run(path: Path) -> None:
    result = doctest.testfile(str(path), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    import torch

    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_docs_exist_for_every_topic() -> None:
    assert {p.name for p in DOCS} >= {"schemes.md", "formats.md", "cli.md", "api.md"}


def test_readme_tour_runs() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    qt = namespace["qt"]
    assert isinstance(qt, quanta.QTensor)
    assert (qt.nbytes, qt.bits_per_value) == (8781824, 4.1875)  # the figures the README's comment states
