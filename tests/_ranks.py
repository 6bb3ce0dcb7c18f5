"""Running a test's worker on several spawned gloo processes, with a deadline.

Each worker is called as ``worker(rank, port, out)`` and saves what the test checks to
``out/rank<r>.pt``; a worker that hangs fails the test instead of the whole run.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import pytest
import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker: Callable, out: str, world: int = 2, timeout_s: float = 120) -> list[dict]:
    """Spawn ``world`` processes of ``worker`` and return each rank's saved results."""
    context = mp.start_processes(worker, args=(free_port(), str(out)), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world}-process run did not finish within {timeout_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    return [torch.load(os.path.join(str(out), f"rank{r}.pt")) for r in range(world)]
