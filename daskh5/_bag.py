"""Dask bags of samples that run on threads unless told otherwise.

dask's bags default to the multiprocessing scheduler, which suits pure-Python
objects.  daskh5's samples are NumPy arrays, decoded and processed with the
GIL released, so threads are as fast, start at once, and need no
``if __name__ == "__main__"`` guard: with processes, a script without one is
re-run by every child (``BrokenProcessPool``, and any write it does happens
again).  :class:`SampleBag` is a ``dask.bag.Bag`` whose default scheduler is
the threaded one; every bag or item derived from it through its methods
(``map``, ``filter``, ``sum``, ...) keeps that default.  As for any dask
collection, ``compute(scheduler=...)``, ``dask.config.set(scheduler=...)`` and
a ``distributed`` client all take precedence.
"""

from __future__ import annotations

import functools
import inspect
import types

import dask.bag as db
import dask.threaded

__all__ = ["SampleBag", "SampleItem"]


class SampleItem(db.Item):
    """A ``dask.bag.Item`` (a reduction of a :class:`SampleBag`) computed on threads by default."""

    __dask_scheduler__ = staticmethod(dask.threaded.get)


class SampleBag(db.Bag):
    """A ``dask.bag.Bag`` of NumPy samples computed on threads by default.

    :func:`daskh5.read_ragged` and :meth:`daskh5.RaggedArray.to_bag` return one.
    dask's bags default to processes, which suit pure-Python objects; NumPy
    samples release the GIL, so threads are as fast, start at once and need
    no ``if __name__ == "__main__"`` guard (with processes, a plain script is
    re-run by every child, its writes too). Bags and items derived through
    its methods (``map``, ``filter``, ``sum``, ...) keep the threaded default;
    ``compute(scheduler=...)``, ``dask.config.set(scheduler=...)`` and a
    ``distributed`` client take precedence, as for any dask collection.

    >>> import dask.bag as db, daskh5
    >>> bag = daskh5.SampleBag.of(db.from_sequence([1, 2, 3], npartitions=2))
    >>> type(bag.map(lambda v: v * 2).sum()).__name__
    'SampleItem'
    >>> bag.map(lambda v: v * 2).sum().compute()
    12
    """

    __dask_scheduler__ = staticmethod(dask.threaded.get)

    @classmethod
    def of(cls, bag: db.Bag) -> SampleBag:
        """``bag`` (same graph, name and partitions) as a :class:`SampleBag`."""
        return cls(bag.dask, bag.name, bag.npartitions)


def _keep_threads(result):
    if isinstance(result, db.Bag) and not isinstance(result, SampleBag):
        return SampleBag.of(result)
    if isinstance(result, db.Item) and not isinstance(result, SampleItem):
        return SampleItem(result.dask, result.key, layer=result.__dask_layers__()[0])
    return result


def _wrapped(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return _keep_threads(method(self, *args, **kwargs))

    return call


def _wrap_methods(cls, base) -> None:
    """Give ``cls`` every public method of ``base``, its results turned into threaded collections."""
    for name in dir(base):
        if name.startswith("_") or name in vars(cls):
            continue
        attr = inspect.getattr_static(base, name)
        if isinstance(attr, types.FunctionType):  # plain methods (not properties, static or class methods)
            setattr(cls, name, _wrapped(attr))


_wrap_methods(SampleBag, db.Bag)
_wrap_methods(SampleItem, db.Item)
