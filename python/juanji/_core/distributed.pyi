"""
MPI ranks, allreduce and broadcast (data-parallel training)
"""
from __future__ import annotations
import juanji._core
import numpy
import typing
__all__: list[str] = ['abort', 'all_reduce', 'barrier', 'broadcast', 'compiled', 'finalize', 'init', 'is_initialized', 'library_version', 'rank', 'world_size']
def abort(code: typing.SupportsInt | typing.SupportsIndex = 1) -> None:
    """
    Ends every rank of the job at once (MPI_Abort) with this exit code.
    """
@typing.overload
def all_reduce(tensor: juanji._core.Tensor, op: str = 'sum') -> None:
    ...
@typing.overload
def all_reduce(array: numpy.ndarray, op: str = 'sum') -> None:
    """
    In place on every rank: the element-wise sum or mean over ranks.
    """
def barrier() -> None:
    ...
@typing.overload
def broadcast(tensor: juanji._core.Tensor, root: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    ...
@typing.overload
def broadcast(array: numpy.ndarray, root: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    """
    In place: root's values on every rank.
    """
def compiled() -> bool:
    """
    Whether this copy of juanji was built with MPI.
    """
def finalize() -> None:
    """
    Ends MPI if init() started it.
    """
def init() -> None:
    """
    Starts MPI, or adopts one already started (by mpi4py); idempotent.
    """
def is_initialized() -> bool:
    ...
def library_version() -> str:
    """
    The MPI library's version text (MPI_Get_library_version); empty without MPI.
    """
def rank() -> int:
    """
    This process's rank: 0 before init().
    """
def world_size() -> int:
    """
    The number of ranks: 1 before init().
    """
