"""``musichash index --cluster``: decoding and encoding on a Ray cluster, storing as on one machine.

The files ``indexer.pipeline`` plans to compute go through a Ray Data pipeline:

1. the file list, one row a file (``from_items``);
2. decode, resample, log-mel and chroma (``pipeline.decode_mel``) in CPU tasks, one file a task;
3. the code model (``pipeline.encode_decoded``) in a pool of actors, each with the model loaded once:
   one a GPU where the cluster has GPUs, else CPU actors;
4. the driver takes the encoded files in batches and commits each batch with one ``put_tracks``
   into the library, as ``index_paths`` does with every result: the rows in two SQL transactions
   from the driver, the codes by ``ShardWriters``, one actor a codes file, all shards at once.
   Planning (unchanged, moved, copied files), errors and the report are ``index_paths``'s own.

Resumable and idempotent because the store is: a row is 'ok' only after its codes are flushed, so
a killed driver leaves at most 'pending' rows, which the next run plans again; a file already
'ok' is unchanged and skipped; a path has one row. A killed worker costs Ray a retry: Ray Data
re-runs the task or restarts the actor and re-sends its batch, and ``index_paths`` stores a
file once however often it is delivered.

Codes are not written by the driver: while the run lasts, the store hands its codes files to
``ShardWriters`` (``LibraryStore.codes_written_elsewhere``), so each file still has one writer, and
a batch's shards are written and flushed in parallel before its rows turn 'ok'. The writers run on
the driver's node, where the library's folder is (a cluster whose nodes share that folder could
place them anywhere). A writer that dies fails the run with its batch left 'pending'; the files
are checked, and salvaged if damaged, when the store takes them back.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np

from musichash.cluster.connect import connect
from musichash.features.spectra import SKETCH_BANDS
from musichash.indexer.pipeline import Coded, IndexingError, decode_mel, encode_decoded
from musichash.indexer.store import LibraryStore
from musichash.models.encoder import LIBRARY_HOP

#: files a batch: the model's unit of work in an actor and the driver's unit of commit
DEFAULT_BATCH = 8
_MEL_BANDS = 96


def _decode_row(row: dict) -> dict:
    """Stage 2 (a CPU task): one file's log-mel and chroma, or why it cannot be used."""
    decoded = decode_mel(row["path"])
    if isinstance(decoded, str):
        return {"i": row["i"], "error": decoded, "fmt": "", "mel": np.zeros((0, _MEL_BANDS), np.float32),
                "chroma": np.zeros(0, np.uint8), "sketch": np.zeros((0, SKETCH_BANDS), np.uint8)}
    mel, fmt, harmony, sketch = decoded
    return {"i": row["i"], "error": "", "fmt": fmt, "mel": mel, "chroma": harmony, "sketch": sketch}


def _decode_args() -> dict:
    return {"num_cpus": 1}


class _Encoder:
    """Stage 3 (an actor): the code model, loaded once, over batches of decoded files."""

    def __init__(self, code_model: str, device: str | None, precision: str, threads: int | None,
                 tagger: str | None = None, hop: int = LIBRARY_HOP) -> None:
        import torch

        from musichash.indexer.tag_source import TaggerTags
        from musichash.models.encoder import CodeModel

        # Ray gives a worker as many threads as it reserved cores (1); a CPU model wants the node's cores,
        # which it shares with the decoding tasks as the single-process indexer shares them with decoding
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.model = CodeModel(code_model, device, precision)
        self.tagger = None if tagger is None else TaggerTags(tagger, self.model.device)
        self.hop = hop

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {k: [] for k in ("i", "error", "fmt", "duration_s", "tags", "track_code",
                                                 "segment_codes", "segment_times", "chroma", "sketch")}
        nbytes = self.model.bits // 8
        for i, error, fmt, mel, harmony, sketch in zip(batch["i"], batch["error"], batch["fmt"], batch["mel"],
                                                       batch["chroma"], batch["sketch"]):
            decoded = str(error) if error else (np.asarray(mel), str(fmt), np.asarray(harmony), np.asarray(sketch))
            coded = encode_decoded(self.model, decoded, tagger=self.tagger, hop=self.hop)
            if isinstance(coded, str):
                coded = Coded("", 0.0, (0.0,), np.zeros(nbytes, np.uint8), np.zeros((0, nbytes), np.uint8),
                              np.zeros(0, np.float32), np.zeros(0, np.uint8), np.zeros((0, SKETCH_BANDS), np.uint8))
            out["i"].append(int(i))
            out["error"].append(str(error))
            out["fmt"].append(coded.fmt)
            out["duration_s"].append(coded.duration_s)
            out["tags"].append(np.asarray(coded.tags, np.float64))
            out["track_code"].append(coded.track_code)
            out["segment_codes"].append(coded.segment_codes)
            out["segment_times"].append(np.asarray(coded.segment_times, np.float32))
            out["chroma"].append(coded.chroma)
            out["sketch"].append(coded.sketch)
        return out


def _coded(row: dict) -> Coded | str:
    if row["error"]:
        return str(row["error"])
    return Coded(str(row["fmt"]), float(row["duration_s"]), tuple(float(p) for p in row["tags"]),
                 np.asarray(row["track_code"], np.uint8), np.asarray(row["segment_codes"], np.uint8),
                 np.asarray(row["segment_times"], np.float32), np.asarray(row["chroma"], np.uint8),
                 np.asarray(row["sketch"], np.uint8).reshape(-1, SKETCH_BANDS))


class ShardWriter:
    """One codes file's writer (a Ray actor): the file is open here, and only here, while the run lasts."""

    def __init__(self, path: str) -> None:
        import h5py

        from musichash.indexer.codes_file import H5_KW

        self.h5 = h5py.File(path, "a", **H5_KW)

    def write(self, rows: list[tuple]) -> int:
        """Write (track_id, track_code, segment_codes, segment_times, chroma, sketch) rows and flush."""
        from musichash.indexer.codes_file import write_group

        for track_id, *codes in rows:
            write_group(self.h5["tracks"], str(track_id), *codes)
        self.h5.flush()
        return os.getpid()

    def close(self) -> None:
        self.h5.close()


class ShardWrites:
    """``put_tracks``' ``write`` over ``ShardWriter`` actors (``actors[j]`` writes shard j): a batch's
    shards are sent at once and all flushed before it returns."""

    def __init__(self, ray, actors: list) -> None:
        self.ray, self.actors = ray, actors

    def ready(self) -> None:
        """Wait until every writer has its file open."""
        self({j: [] for j in range(len(self.actors))})

    def __call__(self, by_shard: dict[int, list[tuple]]) -> None:
        try:
            self.ray.get([self.actors[j].write.remote(rows) for j, rows in by_shard.items()])
        except self.ray.exceptions.RayError as e:
            raise IndexingError(f"a shard writer failed ({type(e).__name__}); what was committed is kept: "
                                "run the same command again to index the rest") from None


@contextmanager
def shard_writers(store: LibraryStore, address: str | None = None) -> Iterator[ShardWrites]:
    """``store``'s codes files written by one ``ShardWriter`` actor each, on this node, for the
    duration; yields the ``put_tracks`` ``write`` that sends a batch's shards to them at once."""
    ray = connect(address)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    remote = ray.remote(ShardWriter).options(num_cpus=0, max_restarts=0, scheduling_strategy=here)
    with store.codes_written_elsewhere() as paths:
        writers = [remote.remote(str(p)) for p in paths]
        try:
            # not waited for here: they start while the pipeline decodes its first batch
            yield ShardWrites(ray, writers)
        finally:
            closing = [w.close.remote() for w in writers]
            for w, done in zip(writers, closing):
                try:  # each waited for on its own: one dead writer must not cut the others' writes short
                    ray.get(done, timeout=600)
                except ray.exceptions.RayError:
                    pass  # a dead writer's file is checked (and salvaged) as the store takes it back
                ray.kill(w)


class RayEncoder:
    """An ``index_paths`` encoder that runs on the Ray cluster at ``address`` (``connect``), and
    writes the codes files through ``shard_writers`` (its ``writing``).

    ``batch_size``: files a model call and a commit (default DEFAULT_BATCH); ``encoders``: model actors
    (default: one a GPU, else one); ``encoder_threads``: torch threads in each actor (default: the node's cores);
    ``tagger``: the library's tagger, as recorded (``indexer.tag_source``), loaded in each actor;
    ``hop``: the library's segment hop (``LibraryStore.segment_hop``).
    """

    def __init__(self, code_model: str, *, address: str | None = None, precision: str = "auto",
                 batch_size: int | None = None, encoders: int | None = None, encoder_threads: int | None = None,
                 tagger: str | None = None, hop: int = LIBRARY_HOP) -> None:
        self.code_model, self.address, self.precision, self.tagger = code_model, address, precision, tagger
        self.hop = hop
        self.batch_size, self.encoders, self.encoder_threads = batch_size, encoders, encoder_threads

    def writing(self, store: LibraryStore):
        return shard_writers(store, self.address)

    def __call__(self, jobs: list) -> Iterable[list[tuple[int, Coded | str]]]:
        if not jobs:
            return
        size = self.batch_size or DEFAULT_BATCH
        connect(self.address)
        import ray
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        gpus = int(ray.cluster_resources().get("GPU", 0))
        ds = ray.data.from_items([{"i": i, "path": str(job[0])} for i, job in enumerate(jobs)],
                                 override_num_blocks=len(jobs))
        # its own CPU tasks, not fused into the model's actors (Ray Data fuses a task map into the actor map
        # after it when their arguments agree; arguments made by a function never do): a GPU actor must
        # not wait on decoding, and the decoders scale with the cluster's cores, not its GPUs
        ds = ds.map(_decode_row, ray_remote_args_fn=_decode_args)
        ds = ds.map_batches(
            _Encoder,
            fn_constructor_kwargs={"code_model": self.code_model, "device": "cuda" if gpus else "cpu",
                                   "precision": self.precision, "threads": self.encoder_threads,
                                   "tagger": self.tagger, "hop": self.hop},
            batch_size=size, compute=ray.data.ActorPoolStrategy(size=self.encoders or max(gpus, 1)),
            num_gpus=1 if gpus else 0, num_cpus=1,
        )  # Ray Data restarts a killed actor and sends its batch again (max_restarts, max_task_retries: -1)
        for batch in ds.iter_batches(batch_size=size, batch_format="numpy", prefetch_batches=1):
            yield [(int(i), _coded({k: v[j] for k, v in batch.items()})) for j, i in enumerate(batch["i"])]

