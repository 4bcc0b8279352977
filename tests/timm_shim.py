"""timm without torchvision, for the tests.

timm (a test dependency: `.ci/setup` installs it with `pip install --no-deps timm==1.0.31`
and its pure dependencies pyyaml, huggingface_hub, safetensors) imports torchvision at import
time only, for its data transforms and FrozenBatchNorm2d; its models (the ViT the tests build)
never call it. torchvision cannot be installed beside this project's CPU torch ("operator
torchvision::nms does not exist"), so `import_timm()` imports timm behind a shim when
torchvision does not import: a meta-path finder that makes `torchvision` and every submodule
an empty module whose attributes are `unittest.mock.MagicMock`s. A torchvision that imports
is used as it is. The finder stays for the rest of the test process (timm keeps what it got).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from unittest import mock


class _MockedTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `torchvision` and `torchvision.*` as empty packages of MagicMock attributes."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: mock.MagicMock(name=f"{spec.name}.{attr}")   # PEP 562
        return module

    def exec_module(self, module):
        pass


def _shim_torchvision() -> None:
    if any(isinstance(finder, _MockedTorchvision) for finder in sys.meta_path):
        return
    try:
        importlib.import_module("torchvision")
        return                                   # a working torchvision: nothing to do
    except Exception:  # missing (ImportError) or broken beside this torch (RuntimeError)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    sys.meta_path.insert(0, _MockedTorchvision())


def import_timm():
    """The timm package, importable without torchvision (see the module docstring)."""
    _shim_torchvision()
    try:
        return importlib.import_module("timm")
    except ImportError as err:
        raise ImportError(f"timm is a test dependency ({err}): .ci/setup installs it, or "
                          "pip install --no-deps timm==1.0.31 && pip install pyyaml huggingface_hub "
                          "safetensors") from None
