"""The one place a ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) is resolved.

The code model runs on a torch device and the search index on FAISS's; the
two can differ (a CUDA torch with faiss-cpu), so each side asks here for what
it can use of the same user setting.
"""

from __future__ import annotations

from musichash.errors import MusichashError

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(MusichashError):
    """A device was asked for that this machine cannot use."""


def _kind(device) -> str:
    name = "auto" if device is None else str(device)
    kind = name.split(":", 1)[0]
    if kind not in DEVICES:
        raise DeviceError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)} (or cuda:N)")
    return kind


def torch_device(device=None):
    """The torch device of the code model: ``auto`` is CUDA when a GPU is usable, else the CPU."""
    import torch

    kind = _kind(device)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r} asked for, but no CUDA GPU is usable here; use --device cpu")
    return torch.device(device)


def faiss_device(device=None) -> str:
    """``cpu`` or ``cuda``: where the FAISS index runs. ``auto`` (and a CUDA torch device with a
    FAISS that has no GPU support) falls back to the CPU; ``cuda`` asked for explicitly does not."""
    import faiss

    kind = _kind(device)
    if kind == "cpu":
        return "cpu"
    if not hasattr(faiss, "GpuIndexBinaryFlat"):
        if kind == "cuda":
            raise DeviceError(
                "device 'cuda' asked for, but the installed FAISS has no GPU support "
                "(faiss-cpu); install faiss-gpu, or use --device cpu"
            )
        return "cpu"
    if faiss.get_num_gpus() < 1:
        if kind == "cuda":
            raise DeviceError(
                "device 'cuda' asked for, but FAISS sees no GPU; check the CUDA driver "
                "and CUDA_VISIBLE_DEVICES, or use --device cpu"
            )
        return "cpu"
    return "cuda"


def index_device(device=None) -> tuple[str, str | None]:
    """Where a flat index searches: ``("cpu", None)``, ``("cuda", None)`` on FAISS's GPU, or
    ``("cuda", "cuda[:N]")`` on that torch device (``search.torch_knn``) when the installed FAISS
    has no GPU support, or sees no GPU, but torch has CUDA: a machine with only CUDA PyTorch
    searches on its GPU too. ``auto`` picks a GPU when either can use one."""
    import torch

    kind = _kind(device)
    if kind == "cpu":
        return "cpu", None
    try:
        where = faiss_device(device)
    except DeviceError:
        if not torch.cuda.is_available():
            raise
        where = "cpu"
    if where == "cuda":
        return "cuda", None
    if torch.cuda.is_available():
        return "cuda", str(torch_device(device))
    return "cpu", None
