"""Past one machine, on Ray (extra ``cluster``): indexing with Ray Data (``cluster.index``) and one
search actor a shard (``cluster.search``). Nothing here is imported unless asked for: Ray is optional."""
