"""Joining a Ray cluster, with one message when Ray is not installed or the cluster cannot be reached."""

from __future__ import annotations

import os

from musichash.errors import MusichashError


class ClusterError(MusichashError):
    """Ray is missing, or its cluster cannot be reached."""


def ray_module():
    try:
        import ray
    except ImportError:
        raise ClusterError("--cluster needs Ray; install it with `pip install 'musichash[cluster]'`") from None
    return ray


def connect(address: str | None = None):
    """Ray, connected: to the cluster at ``address`` ('auto': the one ``ray start`` made on this machine;
    'ray://host:10001': a remote one), else to the one already joined, else a new one on this machine."""
    ray = ray_module()
    if ray.is_initialized():
        return ray
    # Ray's own progress bars and log lines would drown ours; the driver shows files, hours and rate
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClusterError(f"cannot join the Ray cluster at {address or 'this machine'} ({first}); "
                           f"start one with `ray start --head`, or leave out the address") from None
    return ray
