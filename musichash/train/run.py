"""``musichash train`` without the command line: build (or finish) the feature cache, then train."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from musichash.train.cache import CacheConfig, build_cache, load_cache
from musichash.train.data import Dataset
from musichash.train.loop import TrainConfig, train


@dataclass(frozen=True)
class TrainReport:
    checkpoint: Path
    cache: Path
    windows: int
    files: int
    metrics: dict


def run_training(
    dataset: Dataset,
    out: str | Path,
    cache_cfg: CacheConfig,
    train_cfg: TrainConfig,
    *,
    cache: str | Path | None = None,
    resume: bool = False,
    file_done: Callable[[str], None] | None = None,
    epoch_done: Callable[[int, dict], None] | None = None,
    init: str | Path | None = None,
) -> TrainReport:
    """Train on ``dataset`` (``data.load_dataset``) into ``out``; the cache is ``cache`` or ``out/features-<settings>.h5``.

    One cache serves runs of every bit count and head setting: it depends only
    on the data and ``cache_cfg``. ``file_done`` gets a line per cached file
    (starting with ``skipped`` for a file that could not be decoded). ``init``: a CRNNH checkpoint the head
    starts from (``loop.train``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache is not None else out / f"features-{cache_cfg.key()}.h5"
    build_cache(dataset, cache, cache_cfg, progress=file_done)
    feats = load_cache(cache, dataset)
    meta = {"backbone": cache_cfg.backbone, "data": dataset.summary(), "cache": cache.name,
            "cache_config": asdict(cache_cfg), "windows": len(feats.clean)}
    ckpt = train(feats, out, train_cfg, grid=cache_cfg.grid, multilabel=dataset.layout != "classes", meta=meta,
                 resume=resume, progress=epoch_done, init=init)
    metrics = json.loads(ckpt.with_suffix(".json").read_text()).get("metrics", {})
    return TrainReport(ckpt, cache, len(feats.clean), len(dataset.files), metrics)
