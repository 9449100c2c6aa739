"""Load a repository script that is not part of the package (benchmarks/, data/) as a module."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_script(relpath: str, name: str) -> ModuleType:
    """Import ``ROOT/relpath`` as module ``name``; drop it with ``sys.modules.pop(name)``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod
