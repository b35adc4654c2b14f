"""A progress bar over the blocks of a dask computation, on local schedulers and on a cluster.

Blocks are the tasks of one kind (``key_split(key) == name``), for example the
per-block partial statistics of :func:`daskh5.label_stats`.  Locally a dask
callback counts them as they finish; on a ``distributed`` cluster the block
tasks are held as futures of their own, so the scheduler computes each once
and the bar follows ``as_completed``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["compute_with_progress"]


def _block_keys(result, name: str) -> list:
    from dask.utils import key_split

    return [k for k in result.__dask_graph__() if key_split(k) == name]


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="block", desc=desc)


def compute_with_progress(
    result, name: str, desc: str, *, client=None, enabled: bool = True, **kwargs
) -> Any:
    """``result.compute(**kwargs)``, with a bar over its tasks called ``name`` when ``enabled``."""
    if not enabled:
        return result.compute(**kwargs)
    keys = _block_keys(result, name)
    if client is not None:
        return _on_cluster(result, keys, desc, client)
    from dask.callbacks import Callback
    from dask.utils import key_split

    bar = _bar(len(keys), desc)

    class Blocks(Callback):
        def _posttask(self, key, value, dsk, state, worker_id):
            if key_split(key) == name:
                bar.update(1)

    try:
        with Blocks():
            return result.compute(**kwargs)
    finally:
        bar.close()


def _on_cluster(result, keys: list, desc: str, client) -> Any:
    from dask.delayed import Delayed
    from distributed import as_completed

    graph = dict(result.__dask_graph__())  # plain tasks: a Delayed per block key
    blocks = client.compute([Delayed(k, graph) for k in keys])  # the same keys: computed once
    final = client.compute(result)
    bar = _bar(len(blocks), desc)
    try:
        for _ in as_completed(blocks):
            bar.update(1)
        return final.result()
    finally:
        bar.close()
        del blocks
