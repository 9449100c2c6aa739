"""musichash: music similarity search by deep hashing."""

from musichash.errors import MusichashError

__version__ = "0.1.0"
__all__ = ["Library", "MusichashError", "__version__"]


def __getattr__(name: str):
    # ``from musichash import Library`` without loading torch for ``musichash --version``
    if name == "Library":
        from musichash.library import Library

        return Library
    raise AttributeError(f"module 'musichash' has no attribute {name!r}")
