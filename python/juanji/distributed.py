"""Data-parallel training across processes with MPI: ``mpirun -np N python train.py``.

Each process (a *rank*) holds a full copy of the model and trains on its own share of the data;
``model.distribute()`` makes ``train_step`` average the gradients over the ranks before each
update. mpi4py is not needed; where it has started MPI already, :func:`init` adopts it.

Without MPI compiled in (``juanji.show_config()`` says), every function works as a world of one
process, and :func:`init` raises when an MPI launcher started several.
"""

from __future__ import annotations

import atexit
import sys
from typing import Any

from ._core import distributed as _d

__all__ = ["init", "is_initialized", "rank", "world_size", "barrier", "finalize", "abort",
           "all_reduce", "broadcast", "compiled", "library_version"]

compiled = _d.compiled
library_version = _d.library_version
is_initialized = _d.is_initialized
rank = _d.rank
world_size = _d.world_size
barrier = _d.barrier
finalize = _d.finalize
abort = _d.abort

_hooked = False


def init() -> None:
    """Starts MPI (or adopts the MPI that mpi4py started); idempotent.

    Registers :func:`finalize` to run at exit and, when there are several ranks, makes an uncaught
    exception on any rank print its traceback and end the whole job (``MPI_Abort``) instead of
    leaving the other ranks waiting for it.
    """
    global _hooked
    _d.init()
    if _hooked:
        return
    _hooked = True
    atexit.register(_d.finalize)
    if _d.world_size() > 1:
        previous = sys.excepthook

        def abort_on_exception(kind, value, traceback):
            try:
                sys.stderr.write(f"juanji.distributed: rank {_d.rank()} of {_d.world_size()} failed; "
                                 "aborting the job\n")
                previous(kind, value, traceback)
                sys.stderr.flush()
                sys.stdout.flush()
            finally:
                _d.abort(1)

        sys.excepthook = abort_on_exception


def all_reduce(array: Any, op: str = "sum") -> Any:
    """In place on every rank: the element-wise ``"sum"`` or ``"mean"`` over the ranks of a
    C-contiguous, writable float32/float64 NumPy array or CPU :class:`juanji.Tensor` of the same
    shape on each. Every rank must call it, in the same order. Returns ``array``."""
    _d.all_reduce(array, op)
    return array


def broadcast(array: Any, root: int = 0) -> Any:
    """In place: rank ``root``'s values of the array or tensor on every rank. Returns ``array``."""
    _d.broadcast(array, root)
    return array
