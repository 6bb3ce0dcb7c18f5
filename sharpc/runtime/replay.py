"""Common random numbers: every perturbed pass replays the clean pass's global RNG state."""

import threading
from collections.abc import Iterable

import torch

#: Held by a step from start to end. Common random numbers replay the process-wide global RNG,
#: so two steps running in two threads would hand each other's dropout masks to their passes:
#: a step that finds another thread's step inside refuses to start.
STEP_LOCK = threading.Lock()


class CommonRandomNumbers:
    """Replays the clean pass's global RNG state for every perturbed pass (same dropout masks).

    Afterwards the global RNG is left as the clean pass left it, so a step consumes exactly
    the randomness of one ordinary forward/backward pass. CPU and CUDA generators are covered.
    """

    def __init__(self, devices: Iterable[torch.device]):
        self._cuda = sorted({d.index if d.index is not None else torch.cuda.current_device()
                             for d in devices if d.type == "cuda"})
        self._start = self._get()
        self._after_clean = None

    def _get(self):
        return torch.get_rng_state(), [torch.cuda.get_rng_state(i) for i in self._cuda]

    def _set(self, state) -> None:
        cpu, cuda = state
        torch.set_rng_state(cpu)
        for index, s in zip(self._cuda, cuda):
            torch.cuda.set_rng_state(s, index)

    def clean_pass_done(self) -> None:
        self._after_clean = self._get()

    def rewind(self) -> None:
        self._set(self._start)

    def finish(self) -> None:
        if self._after_clean is not None:
            self._set(self._after_clean)


def running_stats(model: torch.nn.Module | None) -> list:
    """Buffers of modules that track running statistics (BatchNorm and friends)."""
    if model is None:
        return []
    return [b for m in model.modules() if getattr(m, "track_running_stats", False)
            for b in m.buffers(recurse=False)]
