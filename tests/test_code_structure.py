"""The shape of the code: short functions, a library that imports nothing from the scripts and
studies around it, and test helpers that only tests import."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 80
# Top-level folders beside the library that use it; it must never use them.
OUTSIDE_THE_LIBRARY = ("training", "examples", "experiments", "benchmarks")
# Everything that is not a test: none of it may import the test helpers.
NOT_TESTS = ("factorcl_hf", "training", "examples", "experiments", "benchmarks", "docs")
TEST_HELPERS = "factorcl_hf.testing_utils"


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


def imported_modules(path, tree=None) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``path``, relative ones resolved against its package
    (``from . import x`` names ``package.x`` too, as it may import a module)."""
    package = list(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree or parsed(path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found += [(node.lineno, module)] + [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def test_nothing_but_tests_imports_the_test_helpers():
    found = [f"{path.relative_to(REPO)}:{line} imports {module}"
             for path in python_files(*NOT_TESTS) if path != REPO / "factorcl_hf" / "testing_utils.py"
             for line, module in imported_modules(path)
             if module == TEST_HELPERS or module.startswith(TEST_HELPERS + ".")]
    assert not found, "\n".join(found)


def test_the_walks_see_what_they_check():
    """Guards against vacuous passes: the walks find the package's files, a long function
    would be measured as such, and an absolute import is seen."""
    assert len(python_files("factorcl_hf")) > 20 and python_files("training")
    tree = ast.parse("import training.train\n\ndef f():\n" + "    x = 1\n" * 90)
    function = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef))
    assert function.end_lineno - function.lineno + 1 == 91
    assert isinstance(tree.body[0], ast.Import) and tree.body[0].names[0].name.split(".")[0] in OUTSIDE_THE_LIBRARY
    # Each way to name the test helpers, from a module two levels down in the package.
    inside = REPO / "factorcl_hf" / "evaluation" / "any.py"
    for source in ("from factorcl_hf.testing_utils import x", "import factorcl_hf.testing_utils",
                   "from ..testing_utils import x", "from .. import testing_utils"):
        assert (1, TEST_HELPERS) in imported_modules(inside, ast.parse(source)), source
