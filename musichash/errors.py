"""The root of every exception musichash raises on purpose.

Each package defines its own subclasses next to the code that raises them;
only ``cli.py`` turns them into one-line messages.
"""


class MusichashError(Exception):
    """Base class for errors a user can act on (bad input, missing files, ...)."""
