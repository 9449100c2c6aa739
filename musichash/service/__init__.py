"""The HTTP service and web page over a library (``musichash serve``; extra: ``serve``)."""

from musichash.service.runtime import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def create_app(config: ServeConfig):
    """The FastAPI app (imported late: FastAPI is the ``serve`` extra's)."""
    from musichash.service.app import create_app as build

    return build(config)
