"""musichash: music similarity search by deep hashing."""

from musichash.errors import MusichashError

__version__ = "0.1.0"
__all__ = ["MusichashError", "__version__"]
