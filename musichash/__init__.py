"""musichash: music similarity search by deep hashing."""

import os

#: how long an idle OpenMP thread spins before it sleeps (libgomp's own default is 300,000).
#: torch and faiss-cpu each bring a libgomp, and a query runs the model (torch's threads)
#: and then the segment search (FAISS's): torch's idle worker kept spinning on a core for
#: the whole search, which took 13-15 ms at 100k tracks instead of 6-7 ms.
#: Read when the libraries load, so only if musichash is imported before torch and faiss;
#: a value set in the environment wins (benchmarks/HISTORY.md, "Two OpenMP runtimes").
GOMP_SPINCOUNT = "10000"
os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)

from musichash.errors import MusichashError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Library", "MusichashError", "__version__"]


def __getattr__(name: str):
    # ``from musichash import Library`` without loading torch for ``musichash --version``
    if name == "Library":
        from musichash.library import Library

        return Library
    raise AttributeError(f"module 'musichash' has no attribute {name!r}")
