"""Where a step's time goes outside the closure, and the floor that the perturbation draws set.

MLP 64-128-128-10, batch 128, SGD momentum 0.9, one torch thread. For each optimizer it times
whole steps and, with a timing closure, the forward/backward passes inside them; the rest is
the optimizer's own work (bookkeeping, draws, base step). It also times one draw of a
Gaussian vector of the model's size with torch's CPU generator: FrobSAM's n draws per step are
work that 1 + n plain SGD steps never do, so they bound the ratio from below.

    PYTHONPATH=.:<pytorch_optimizer> python benchmarks/step_floor.py   # the peer's row needs it

A hand-written SAM step with the SAM preset's semantics (bit-exact restore, RNG replay, Delta, a
host-read finiteness check) but none of its generality is timed beside them: the floor that a
step specialized per measure could reach.
    python benchmarks/step_floor.py --phases    # also: each piece of the step, outside the closure
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from run_all import Algorithm3  # noqa: E402

from sharpc.optim import SAM, FrobSAM  # noqa: E402
from sharpc.runtime import accumulate, estimator, optimizer  # noqa: E402

#: The pieces of a step, timed one by one with --phases (outside the closure: nested pieces and
#: closure calls are subtracted, so the rows add up to the step's own work).
PHASES = {"settings": (optimizer.PhiPsiSAM, "_settings"),
          "start (backup of x)": (optimizer.PhiPsiSAM, "_start"),
          "clean pass (g0)": (optimizer.PhiPsiSAM, "_clean_pass"),
          "perturb (draw, x + e)": (optimizer.PhiPsiSAM, "_perturb"),
          "perturbed passes (directions, sums)": (accumulate.Sums, "passes"),
          "estimator: weights": (estimator.Estimator, "weights"),
          "estimator: combine": (estimator.Estimator, "combine"),
          "restore x": (optimizer.PhiPsiSAM, "_back_to_x"),
          "finiteness verdict": (optimizer.PhiPsiSAM, "_agree"),
          "gradient (g0 + weighted sums)": (accumulate.Sums, "gradient")}


def timed_phases(clock: list) -> collections.Counter:
    """Wrap each phase so that its own time (less nested phases and closure time) adds to a counter."""
    spent, stack = collections.Counter(), []
    for label, (owner, name) in PHASES.items():
        method = getattr(owner, name)

        def wrapper(*args, _method=method, _label=label, **kwargs):
            start, inner_before = time.perf_counter(), clock[0]
            stack.append(0.0)
            try:
                return _method(*args, **kwargs)
            finally:
                nested = stack.pop()
                total = time.perf_counter() - start
                spent[_label] += total - nested - (clock[0] - inner_before)
                if stack:
                    stack[-1] += total - (clock[0] - inner_before)
        setattr(owner, name, wrapper)
    return spent

SGD = dict(lr=0.01, momentum=0.9)
N = 4


def hand_written_sam(params: list, closure, rho: float = 0.05):
    """A SAM step with the SAM preset's semantics and none of its machinery: the floor a
    specialized step could reach. x is restored bit-exactly from a backup, the perturbed pass
    replays the clean pass's global RNG state, .grad = g0 + strength (g1 - g0) with strength 1,
    Delta is formed, and the finiteness of the losses and the gradient is read on the host."""
    base = torch.optim.SGD(params, **SGD)
    backup = [torch.empty_like(p) for p in params]

    @torch.no_grad()
    def step():
        rng = torch.get_rng_state()
        torch._foreach_copy_(backup, params)
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss0 = closure().detach()
        g0 = [p.grad for p in params]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g0)))
        torch._foreach_add_(params, torch._foreach_mul(g0, rho / norm.clamp_min(1e-12)))
        for p in params:
            p.grad = None
        torch.set_rng_state(rng)
        with torch.enable_grad():
            loss1 = closure().detach()
        torch._foreach_copy_(params, backup)
        delta = (loss1 - loss0) / rho**2
        g1 = [p.grad for p in params]
        torch._foreach_sub_(g1, g0)
        torch._foreach_add_(g1, g0)
        if torch.isfinite(torch.stack([loss0, loss1, delta]).sum() + sum(g.sum() for g in g1)).item():
            base.step()
        return loss0
    return step


def hand_written_frobsam(params: list, closure, n: int = N, rho: float = 0.01, strength: float = 1e-7, seed: int = 0):
    """FrobSAM's step (unbiased U-statistic, one-sided differences) with the preset's semantics and
    none of its machinery: x, g0 and two accumulators in flat buffers kept across steps, the
    perturbation drawn over the whole vector, RNG replay, a bit-exact restore and a host-read
    finiteness check of the losses, the coefficients and the gradient."""
    base = torch.optim.SGD(params, **SGD)
    sizes = [p.numel() for p in params]

    def flat():
        buffer = torch.zeros(sum(sizes))
        return buffer, [v.view_as(p) for v, p in zip(buffer.split(sizes), params)]
    (x, x_views), (g0, g0_views), (grad, grad_views) = flat(), flat(), flat()
    sum_g, sum_delta_g = torch.zeros_like(x), torch.zeros_like(x)
    generator = torch.Generator().manual_seed(seed)
    inverse_rho2 = torch.tensor(1 / rho**2)

    @torch.no_grad()
    def step():
        rng, before = torch.get_rng_state(), generator.get_state()
        torch._foreach_copy_(x_views, params)
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss0 = closure().detach()
        torch._foreach_copy_(g0_views, [p.grad for p in params])
        for p, view in zip(params, grad_views):
            p.grad = view
        losses, deltas = [loss0], []
        for i in range(n):
            grad.normal_(generator=generator)
            torch.add(x, grad, alpha=rho, out=grad)
            torch._foreach_copy_(params, grad_views)
            grad.zero_()
            torch.set_rng_state(rng)
            with torch.enable_grad():
                loss = closure().detach()
            grad.sub_(g0)
            delta = (loss - loss0) * inverse_rho2
            if i == 0:
                sum_g.copy_(grad)
                torch.mul(grad, delta, out=sum_delta_g)
            else:
                sum_g.add_(grad)
                sum_delta_g.addcmul_(grad, delta)
            losses.append(loss)
            deltas.append(delta)
        torch._foreach_copy_(params, x_views)
        torch.set_rng_state(rng)
        samples = torch.stack(deltas)  # U = 2 P2 / n - 2 (P1^2 - P2) / (n (n - 1)), P_k = sum Delta^k
        p1 = samples.sum()
        coefficients = torch.stack([-4 * p1 / (n * (n - 1)), p1.new_tensor(2 * (2 / n + 2 / (n * (n - 1))))])
        coefficients = coefficients * (strength / rho**2)
        g0.addcmul_(sum_g, coefficients[0])
        g0.addcmul_(sum_delta_g, coefficients[1])
        if not torch.isfinite(torch.cat([torch.stack(losses), coefficients]).sum() + g0.sum()).item():
            generator.set_state(before)
            raise FloatingPointError("non-finite step")
        grad.copy_(g0)
        base.step()
        return loss0
    return step


def main(repeats: int = 40, inner: int = 10, phases: bool = False) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10))
    x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
    inside = [0.0]

    def closure():
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        inside[0] += time.perf_counter() - start
        return loss

    sgd = torch.optim.SGD(model.parameters(), **SGD)
    frob = FrobSAM(model.parameters(), n_samples=N, seed=0, rho=0.01, strength=1e-7, relative=False,
                   difference="one-sided", clip=None, **SGD)
    sam = SAM(model.parameters(), rho=0.05, **SGD)
    frosam = Algorithm3(model.parameters(), n=N, seed=0, rho=0.01, strength=1e-7 / 0.01**2, draw="per-tensor", **SGD)
    steps = {"SGD": lambda: (sgd.zero_grad(), closure(), sgd.step()),
             f"FrobSAM n={N} one-sided": lambda: frob.step(closure), "SAM preset": lambda: sam.step(closure),
             "SAM, hand-written, same semantics": hand_written_sam(list(model.parameters()), closure),
             f"FrobSAM n={N}, hand-written, same semantics": hand_written_frobsam(list(model.parameters()), closure),
             "FROSAM structure (issue 10's peer)": lambda: frosam.step(closure)}
    try:
        from pytorch_optimizer import SAM as ReferenceSAM

        reference = ReferenceSAM(model.parameters(), torch.optim.SGD, rho=0.05, **SGD)
        steps["pytorch_optimizer.SAM"] = lambda: (closure(), reference.first_step(zero_grad=True), closure(),
                                                  reference.second_step(zero_grad=True))
    except ImportError:
        pass
    for step in steps.values():
        for _ in range(20):
            step()
    if phases:
        print_phases(steps, inside, repeats * inner)
        return
    total, passes = {k: [] for k in steps}, {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():  # interleaved: load changes hit every row alike
            inside[0], start = 0.0, time.perf_counter()
            for _ in range(inner):
                step()
            total[name].append((time.perf_counter() - start) / inner * 1e3)
            passes[name].append(inside[0] / inner * 1e3)
    d = sum(p.numel() for p in model.parameters())
    buffer, generator = torch.empty(d), torch.Generator().manual_seed(0)
    draws = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            buffer.normal_(generator=generator)
        draws.append((time.perf_counter() - start) / inner * 1e3)
    print(f"torch {torch.__version__}, d = {d}, medians over {repeats} x {inner} steps")
    print("| optimizer | step | passes (closure) | outside the closure |")
    print("|---|---:|---:|---:|")
    median = {k: (statistics.median(total[k]), statistics.median(passes[k])) for k in steps}
    for name, (step, inside_ms) in median.items():
        print(f"| {name} | {step:.3f} ms | {inside_ms:.3f} ms | {step - inside_ms:.3f} ms |")
    draw = statistics.median(draws)
    sgd_step = median["SGD"][0]
    frob_step, frob_passes = median[f"FrobSAM n={N} one-sided"]
    print(f"\none Gaussian draw of {d} numbers: {draw:.3f} ms")
    frob_hand = median[f"FrobSAM n={N}, hand-written, same semantics"][0]
    frosam = median["FROSAM structure (issue 10's peer)"][0]
    print(f"FrobSAM n={N} / {N + 1} x SGD step: {frob_step / ((N + 1) * sgd_step):.2f}; the hand-written step with the "
          f"same semantics: {frob_hand / ((N + 1) * sgd_step):.2f}; nothing outside the closure but the {N} draws and "
          f"one SGD update: {(frob_passes + N * draw + sgd_step - median['SGD'][1]) / ((N + 1) * sgd_step):.2f}")
    print(f"FrobSAM n={N} / FROSAM structure: {frob_step / frosam:.2f}; the hand-written step: "
          f"{frob_hand / frosam:.2f}")
    if "pytorch_optimizer.SAM" in median:
        peer = median["pytorch_optimizer.SAM"][0]
        floor = median["SAM, hand-written, same semantics"][0] / peer
        print(f"SAM preset / pytorch_optimizer.SAM: {median['SAM preset'][0] / peer:.2f}; the hand-written step "
              f"with the same semantics / pytorch_optimizer.SAM: {floor:.2f}")


def print_phases(steps: dict, inside: list, count: int) -> None:
    """Each sharpc row's step split by PHASES, averaged over ``count`` steps (the timers add ~1 us each)."""
    spent = timed_phases(inside)
    rows = {}
    for name, step in steps.items():
        if name == "SGD" or "pytorch" in name or "hand-written" in name or "FROSAM" in name:
            continue
        spent.clear()
        inside[0], start = 0.0, time.perf_counter()
        for _ in range(count):
            step()
        total = (time.perf_counter() - start) / count * 1e6
        row = {label: seconds / count * 1e6 for label, seconds in spent.items()}
        row["closure (the passes)"] = inside[0] / count * 1e6
        row["the rest (base step, wrappers)"] = total - sum(row.values())
        row["step"] = total
        rows[name] = row
    print("| piece of the step | " + " | ".join(rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for label in [*PHASES, "the rest (base step, wrappers)", "closure (the passes)", "step"]:
        print(f"| {label} | " + " | ".join(f"{row.get(label, 0.0):.0f} us" for row in rows.values()) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", action="store_true", help="time each piece of the sharpc steps instead")
    main(phases=parser.parse_args().phases)
