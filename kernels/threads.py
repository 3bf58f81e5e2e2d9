"""Parallel kernels from several Python threads, on every Numba threading layer.

Numba runs ``parallel=True`` code on one of three threading layers: ``tbb`` or ``omp``
where Intel TBB or an OpenMP runtime (``libgomp``) loads, else its own ``workqueue``.
The first two are thread-safe. ``workqueue`` is not: when a second Python thread
enters a parallel region while another runs one, Numba prints "Concurrent access has
been detected" and terminates the process. A node calls parallel kernels from several
threads at once (the miner's attempts, block validation, a client's Freivalds check,
matrix commitments), and a machine without ``libgomp`` (a slim container, a Mac
without ``libomp``) gets ``workqueue``.

So every parallel kernel is wrapped in :func:`exclusive`: where the layer is
thread-safe the wrapper only calls it; on ``workqueue`` it takes one process-wide
re-entrant lock first, and parallel kernels run one at a time, each still on all
cores. Only Python calls are wrapped: a parallel kernel called from compiled code
would run unguarded, so none is (a wrapped kernel is not callable from ``njit`` code,
and Numba refuses to compile such a call).
"""

from __future__ import annotations

import functools
import threading
import types
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

F = TypeVar("F", bound=Callable[..., Any])

THREADSAFE_LAYERS = frozenset({"tbb", "omp"})

_lock = threading.RLock()
_threadsafe: bool | None = None


def threading_layer() -> str:
    """The threading layer this process's parallel kernels run on (started if need be)."""
    numba.get_num_threads()  # starts the layer, as the first parallel region would
    return str(numba.threading_layer())


def layer_is_threadsafe() -> bool:
    """Whether two threads may run parallel kernels at once (decided once per process;
    if the layer cannot be named, it is treated as unsafe)."""
    global _threadsafe
    if _threadsafe is None:
        try:
            safe = threading_layer() in THREADSAFE_LAYERS
        except Exception:  # an unknown layer gets the lock, never a crash
            safe = False
        _threadsafe = safe
    return _threadsafe


class _Exclusive:
    """A Numba dispatcher behind the lock where the threading layer needs it; every
    other attribute (``inspect_asm``, ``py_func``, ``signatures``…) is the dispatcher's."""

    def __init__(self, dispatcher: Any) -> None:
        self._dispatcher = dispatcher
        functools.update_wrapper(self, dispatcher, updated=())  # its state stays its own

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _threadsafe or (_threadsafe is None and layer_is_threadsafe()):
            return self._dispatcher(*args, **kwargs)
        with _lock:
            return self._dispatcher(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dispatcher, name)


def exclusive(dispatcher: F) -> F:
    """Decorate a ``parallel=True`` kernel (above its ``@njit``) so that concurrent Python
    calls from several threads cannot crash the process (module docstring)."""
    return cast(F, _Exclusive(dispatcher))


def own_build(body: F, name: str) -> F:
    """A copy of the plain function ``body`` under ``name``, for a second compiled build
    of one body (serial beside parallel: ``njit(...)(own_build(body, "…"))``).

    Numba's on-disk cache files a function by its qualified name and first line, and
    keys its entries by signature, target and bytecode, not by the compile flags: two
    builds of one function object share an entry, so a process loads whichever build
    was cached first for both (a "parallel" kernel that runs on one thread). A copy
    under its own name gets its own cache file."""
    fn = cast(types.FunctionType, body)
    copy = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = name
    copy.__doc__ = fn.__doc__
    copy.__module__ = fn.__module__
    copy.__annotations__ = dict(fn.__annotations__)
    return cast(F, copy)
