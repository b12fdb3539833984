"""Multi-process training: ``--gpus N`` launches one process per device with torch.distributed
(NCCL on GPUs, gloo on CPUs so a 2-process run can be tested anywhere).

Usage by a trainer::

    launch(worker_fn, num_procs, args=(options,))   # worker_fn(rank, world, *args)

Inside the worker, :func:`all_reduce_grads`, :func:`all_reduce_mean`, :func:`is_main`, :func:`barrier`
keep the processes in step; they are no-ops in a single process.
"""

from __future__ import annotations

import os
import socket
import tempfile

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, world: int, init_file: str, backend: str, args: tuple):
    if world > 1:
        dist.init_process_group(
            backend=backend, init_method=f"file://{init_file}", rank=rank, world_size=world
        )
        if backend == "nccl":
            torch.cuda.set_device(rank)
    try:
        fn(rank, world, *args)
        if world > 1:
            # every rank must be done with the group before any rank tears it down; otherwise
            # gloo's threads can be destroyed mid-use and abort the process at exit
            dist.barrier()
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def launch(fn, num_procs: int, args: tuple = (), backend: str | None = None) -> None:
    """Run ``fn(rank, world, *args)`` in ``num_procs`` processes (in-process when 1).

    ``backend`` defaults to NCCL when CUDA is available and to gloo otherwise.
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if num_procs <= 1:
        _entry(0, fn, 1, "", backend, args)
        return
    if backend == "nccl" and torch.cuda.device_count() < num_procs:
        from cellsynth.errors import CellsynthError

        raise CellsynthError(
            f"--gpus {num_procs} asked for, but only {torch.cuda.device_count()} CUDA devices"
        )
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, ".dist_init")
        torch.multiprocessing.spawn(
            _entry, args=(fn, num_procs, init_file, backend, args), nprocs=num_procs, join=True
        )


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_grads(params) -> None:
    """Average the gradients of ``params`` over all processes (one flat all-reduce)."""
    n = world_size()
    if n == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= n
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all processes (returns a new tensor)."""
    value = value.detach().clone()
    if world_size() > 1:
        dist.all_reduce(value)
        value /= world_size()
    return value


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of ``module`` from rank ``src`` to every process."""
    if world_size() == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


def free_port() -> int:
    """A free TCP port on the loopback interface (for tcp:// init methods)."""
    return _free_port()
