"""An NCCL communicator for TensorRT's in-engine collectives, created once per tensor-parallel group.

``IExecutionContext.set_communicator`` takes a PyCapsule wrapping an ``ncclComm_t``. torch does not hand out
the communicators of its NCCL process groups (and TensorRT must not share one that torch is using on
another stream), so a dedicated one is created through libnccl's C API with ctypes: tp rank 0 of each
pipeline stage makes an ``ncclUniqueId``, the 128 id bytes go to every rank through torch.distributed, and
each rank calls ``ncclCommInitRank``. libnccl comes with CUDA builds of torch (the ``nvidia-nccl`` wheel).

Executed in CI (CPU): the capsule, the id (de)serialization, the library search. Executed on 2x H200 by hand
(``tests/eval/test_trt_backend_gpu.py``): ``tp_communicator`` end to end and an ``ncclAllReduce`` through
the communicator. Not executed: handing it to TensorRT (``set_communicator``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
from pathlib import Path

from .backends.base import RunnerError

UNIQUE_ID_BYTES = 128  # NCCL_UNIQUE_ID_BYTES
LIBRARY_ENV = "CKPT_EVAL_NCCL_LIBRARY"  # explicit path to libnccl.so.2


class NcclUniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_char * UNIQUE_ID_BYTES)]


def pointer_capsule(address: int) -> object:
    """A PyCapsule holding ``address`` with no name and no destructor (what ``set_communicator`` takes)."""
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return new(ctypes.c_void_p(address), None, None)


def capsule_address(capsule: object) -> int:
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return int(get(capsule, None) or 0)


def library_candidates() -> list[str]:
    """Where libnccl may be: the env override, the nvidia-nccl wheel next to torch, the loader's search path."""
    found = [os.environ[LIBRARY_ENV]] if os.environ.get(LIBRARY_ENV) else []
    for site in sys.path:
        found += sorted(glob.glob(os.path.join(site, "nvidia", "nccl", "lib", "libnccl.so*")))
    found.append("libnccl.so.2")
    name = ctypes.util.find_library("nccl")
    if name:
        found.append(name)
    return list(dict.fromkeys(found))


def load_library() -> ctypes.CDLL:
    errors = []
    for candidate in library_candidates():
        try:
            lib = ctypes.CDLL(candidate)
        except OSError as err:
            errors.append(f"{Path(candidate).name}: {err}")
            continue
        lib.ncclGetErrorString.restype = ctypes.c_char_p
        lib.ncclGetErrorString.argtypes = [ctypes.c_int]
        return lib
    raise RunnerError(
        f"libnccl not found (tried {', '.join(library_candidates())}): tensor-parallel engines need "
        f"NCCL (a CUDA build of torch brings it; or set {LIBRARY_ENV}=/path/libnccl.so.2)"
    )


def _check(lib: ctypes.CDLL, result: int, call: str) -> None:
    if result != 0:
        raise RunnerError(f"{call} failed: NCCL error {result} ({lib.ncclGetErrorString(result).decode()})")


def new_unique_id(lib: ctypes.CDLL) -> bytes:
    uid = NcclUniqueId()
    _check(lib, lib.ncclGetUniqueId(ctypes.byref(uid)), "ncclGetUniqueId")
    return ctypes.string_at(ctypes.addressof(uid), UNIQUE_ID_BYTES)


def unique_id_from_bytes(data: bytes) -> NcclUniqueId:
    if len(data) != UNIQUE_ID_BYTES:
        raise RunnerError(f"NCCL unique id: expected {UNIQUE_ID_BYTES} bytes, got {len(data)}")
    uid = NcclUniqueId()
    ctypes.memmove(ctypes.addressof(uid), data, UNIQUE_ID_BYTES)
    return uid


class NcclCommunicator:
    """This rank's member of a group of ``size`` ranks (call on every member with the same ``uid``)."""

    def __init__(self, uid: bytes, size: int, rank: int, lib: ctypes.CDLL | None = None):
        self.lib = lib or load_library()
        self.comm = ctypes.c_void_p()
        _check(
            self.lib,
            self.lib.ncclCommInitRank(ctypes.byref(self.comm), size, unique_id_from_bytes(uid), rank),
            f"ncclCommInitRank(size {size}, rank {rank})",
        )

    def capsule(self) -> object:
        if self.comm.value is None:
            raise ValueError("NCCL communicator: closed")
        return pointer_capsule(self.comm.value)

    def close(self) -> None:
        if self.comm.value:
            self.lib.ncclCommDestroy(self.comm)
            self.comm = ctypes.c_void_p()


def tp_communicator(par) -> NcclCommunicator:
    """One communicator per tensor-parallel group of ``par`` (a ``distributed.Parallel``): the group's tp rank 0
    makes the id, every rank of the world learns every group's id, each joins its own group's."""
    import torch.distributed as dist

    lib = load_library()
    mine = new_unique_id(lib) if par.tp_rank == 0 else None
    ids: list = [None] * par.mapping.world_size
    dist.all_gather_object(ids, mine)
    uid = ids[par.mapping.rank(0, par.pp_rank)]
    return NcclCommunicator(uid, par.tp_size, par.tp_rank, lib)
