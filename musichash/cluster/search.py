"""Search with a library's segment shards held by Ray actors, one a shard, spread over the nodes.

``attach(lib)`` moves the segment index of an open ``Library`` into ``ShardActor``s (each builds its
shard's FAISS index from the codes it is sent, on a GPU where its node has one) and leaves in its place
a ``RemoteShards``, which answers ``search`` as ``search.shards.ShardedIndex`` does: the query's windows
go to every actor at once and each actor's k nearest come back to be merged (``merge_knn``). Everything
else stays in the front process (encoding the clip, re-ranking, the vote, chroma, the store), so
``Library.search`` and ``Library.dedup`` run unchanged over it. ``musichash serve --cluster`` is that
front: its one reader attaches the shards when it opens the library, and again when a write moves
the library's generation (the old actors are stopped).
"""

from __future__ import annotations

import numpy as np

from musichash.cluster.connect import ClusterError, connect
from musichash.search.faiss_index import BinaryIndex, IndexConfig
from musichash.search.shards import ShardedIndex, merge_knn


class ShardActor:
    """One shard's segment index (run as a Ray actor)."""

    def __init__(self, codes: np.ndarray, ids: np.ndarray, config: IndexConfig, device: str) -> None:
        self.index = BinaryIndex.build(codes, ids, config, device)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(xq, k)

    def ntotal(self) -> int:
        return self.index.ntotal


class RemoteShards:
    """Shard actors answering ``search`` as one index would (``ShardedIndex``'s interface, read side)."""

    def __init__(self, actors: list, like: ShardedIndex | BinaryIndex) -> None:
        self.actors = actors
        self.ntotal, self.bits, self.kind, self.config = like.ntotal, like.bits, like.kind, like.config
        self.device = "ray"

    def __len__(self) -> int:
        return self.ntotal

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ray = connect()
        return merge_knn(ray.get([a.search.remote(xq, k) for a in self.actors]), k)

    def close(self) -> None:
        """Stop the shard actors (a reopened library attaches new ones)."""
        ray = connect()
        for a in self.actors:
            ray.kill(a)
        self.actors = []


#: seconds the shard actors have to start and build their indexes
PLACE_TIMEOUT_S = 300.0


def shard_cpus(nodes: list[dict], n_shards: int) -> float:
    """CPUs a shard actor reserves: one where the cluster has a core a shard, else an equal share
    that lets the shards spread over the live nodes fit on the smallest of them (a reservation a
    node cannot hold leaves its actor unscheduled, and the first query waits for ever)."""
    cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in nodes if n.get("Alive")]
    if not cpus:
        return 0.0
    per_node = -(-n_shards // len(cpus))
    return min(1.0, min(cpus) / per_node)


def attach(lib, address: str | None = None) -> RemoteShards:
    """Serve ``lib``'s segment shards from actors (one a shard, spread over the cluster's nodes, one GPU
    each where the cluster has GPUs); ``lib``'s searches use them from now on. Returns the remote index."""
    ray = connect(address)
    index = lib.search_index()
    shards = index.segments.shards if isinstance(index.segments, ShardedIndex) else [index.segments]
    gpus = int(ray.cluster_resources().get("GPU", 0))
    remote = ray.remote(ShardActor).options(num_cpus=0 if gpus else shard_cpus(ray.nodes(), len(shards)),
                                            num_gpus=1 if gpus else 0, scheduling_strategy="SPREAD")
    actors = []
    for s in shards:
        codes, ids = s._codes_and_ids()
        actors.append(remote.remote(ray.put(codes), ray.put(ids), s.config, "cuda" if gpus else "cpu"))
    try:  # built before the first query; an actor that finds no place would make it wait for ever
        ray.get([a.ntotal.remote() for a in actors], timeout=PLACE_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        for a in actors:
            ray.kill(a)
        raise ClusterError(f"the {len(shards)} shard actors could not all be placed on the Ray cluster within "
                           f"{PLACE_TIMEOUT_S:.0f} s; check `ray status` for free CPUs (or GPUs)") from None
    index.segments = RemoteShards(actors, index.segments)
    return index.segments
