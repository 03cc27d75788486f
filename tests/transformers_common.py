"""Import transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) from the
source distribution of the installed transformers version.

The wheel carries no tests and this repository copies none: `make install` (or, failing that,
the first test run) downloads the sdist with pip into `<venv>/transformers-sdist/`, and this
module extracts `tests/test_modeling_common.py` and `tests/test_configuration_common.py` into a
package beside it. The sdist lacks `tests/exporters/`, `tests/generation/` and `tests/utils/`,
from which those two files import three names; the package gets minimal stand-ins for them
(this harness tests a model that neither exports nor generates).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tarfile
from pathlib import Path

import transformers

PACKAGE = "transformers_common_tests"
COMMON_FILES = ("test_modeling_common.py", "test_configuration_common.py")
# Stand-ins for the modules of the transformers repository that the sdist does not ship.
STAND_INS = {
    "exporters/test_export.py": "class ExportTesterMixin:\n    \"\"\"No export tests: stand-in.\"\"\"\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    \"\"\"No generation tests: stand-in.\"\"\"\n",
    # Used only for configs without sub-configs (FactorCLConfig has one); a few common keys.
    "utils/test_configuration_utils.py": (
        "config_common_kwargs = {'return_dict': False, 'output_hidden_states': True, "
        "'output_attentions': True, 'dtype': 'float16', 'problem_type': 'regression'}\n"
    ),
}


def sdist_dir() -> Path:
    return Path(sys.prefix) / "transformers-sdist"


def sdist_path(version: str = transformers.__version__) -> Path:
    """The sdist of ``version``, downloaded with pip into :func:`sdist_dir` when missing."""
    archive = sdist_dir() / f"transformers-{version}.tar.gz"
    if not archive.exists():
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                   f"transformers=={version}", "-d", str(sdist_dir())]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not archive.exists():
            raise FileNotFoundError(
                f"transformers {version} sdist not found at {archive} and pip could not download it "
                f"(run `make install` with registry access): {done.stderr.strip()[-500:]}"
            )
    return archive


def load_common_tests(version: str = transformers.__version__):
    """``(test_modeling_common, test_configuration_common)`` modules of ``version``."""
    root = sdist_dir() / f"common-tests-{version}"
    package = root / PACKAGE
    if not all((package / name).exists() for name in COMMON_FILES):
        with tarfile.open(sdist_path(version)) as archive:
            for name in COMMON_FILES:
                member = archive.extractfile(f"transformers-{version}/tests/{name}")
                if member is None:
                    raise FileNotFoundError(f"tests/{name} is not in the transformers {version} sdist")
                package.mkdir(parents=True, exist_ok=True)
                (package / name).write_bytes(member.read())
        for relative, text in STAND_INS.items():
            path = package / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for folder in {package} | {(package / r).parent for r in STAND_INS}:
            (folder / "__init__.py").touch()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return tuple(importlib.import_module(f"{PACKAGE}.{Path(name).stem}") for name in COMMON_FILES)
