"""The shape of the code: short functions, and a library that imports nothing from the scripts
and studies around it."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 80
# Top-level folders beside the library that use it; it must never use them.
OUTSIDE_THE_LIBRARY = ("training", "examples", "experiments", "benchmarks")


def python_files(*folders):
    return sorted(path for folder in folders for path in (REPO / folder).rglob("*.py"))


def parsed(path):
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("folder", ["factorcl_hf", "training"])
def test_every_function_is_at_most_80_lines(folder):
    too_long = []
    for path in python_files(folder):
        for node in ast.walk(parsed(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
                lines = node.end_lineno - first + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(REPO)}:{first} {node.name}() has {lines} lines")
    assert not too_long, "\n".join(too_long)


def test_the_library_imports_nothing_from_training_examples_experiments_or_benchmarks():
    found = []
    for path in python_files("factorcl_hf"):
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            found += [f"{path.relative_to(REPO)}:{node.lineno} imports {name}"
                      for name in names if name.split(".")[0] in OUTSIDE_THE_LIBRARY]
    assert not found, "\n".join(found)


def test_the_walks_see_what_they_check():
    """Guards against vacuous passes: the walks find the package's files, a long function
    would be measured as such, and an absolute import is seen."""
    assert len(python_files("factorcl_hf")) > 20 and python_files("training")
    tree = ast.parse("import training.train\n\ndef f():\n" + "    x = 1\n" * 90)
    function = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef))
    assert function.end_lineno - function.lineno + 1 == 91
    assert isinstance(tree.body[0], ast.Import) and tree.body[0].names[0].name.split(".")[0] in OUTSIDE_THE_LIBRARY
