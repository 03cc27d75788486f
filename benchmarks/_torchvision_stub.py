"""Import a library that imports torchvision at module level, where torchvision is absent.

open_clip and clip_benchmark import torchvision when they are imported, but the registry's
torchvision does not import beside this project's CPU torch wheel (and then breaks
``from transformers import CLIPModel``; /work/shared/ENVIRONMENT.md), so it is not installed.
The benchmarks never call what they import from it (image transforms, dataset classes, a
ResNet helper): while :func:`import_with_torchvision_stubbed` imports the library, every
``torchvision`` module is a stub whose names are classes that raise when instantiated, and the
stubs are gone afterwards. Where torchvision is installed, the real one is used.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types


class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"  # e.g. InterpolationMode.BICUBIC in a default argument


class _Unavailable(metaclass=_StubMeta):
    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"torchvision is not installed: {type(self).__name__} is a stub (benchmarks/_torchvision_stub.py)")


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubMeta(name, (_Unavailable,), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``torchvision`` and each of its submodules as a :class:`_StubModule` package."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def import_with_torchvision_stubbed(name: str):
    """``importlib.import_module(name)``, with torchvision stubbed for that import only when it
    is not installed. Import transformers before (it then settles that torchvision is absent)."""
    if name in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return importlib.import_module(name)
    finder = _StubFinder()
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(name)
    finally:
        sys.meta_path.remove(finder)
        for module in [module for module in sys.modules if module == "torchvision" or module.startswith("torchvision.")]:
            del sys.modules[module]
