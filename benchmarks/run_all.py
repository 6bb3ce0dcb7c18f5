"""Every sharpc benchmark in one run, printed as one Markdown table.

* step time against (n + 1) forward/backward + SGD passes (the natural unit of a step);
* the SAM preset against pytorch-optimizer's SAM (optional import);
* FrobSAM against a plain transcription of the paper's Algorithm 3;
* a torch.func.vmap prototype (functional_call + vmap over n perturbations) against the loop;
* distributed step time on gloo for 1 and 2 processes (benchmarks/distributed_step.py);
* compile latency (benchmarks/compile_latency.py);
* peak memory per memory mode (benchmarks/memory_modes.py; its --rss adds peak RSS);
* the error bfloat16 autocast puts into Delta, by rho.

Timed configurations that are compared are interleaved repeat by repeat; every figure is
a median over repeats of one run, ratios taken within it.

    python benchmarks/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compile_latency  # noqa: E402
import distributed_step  # noqa: E402
import memory_modes  # noqa: E402
import op_counts  # noqa: E402
from step_overhead import CLOCK, Run, cnn, measure, mlp  # noqa: E402

from sharpc.optim import SAM, FrobSAM, TraceSAM  # noqa: E402

warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
SGD = dict(lr=0.01, momentum=0.9)


# ----------------------------------------------------------------------------- references
class Algorithm3:
    """Frob-SAM as Algorithm 3 of Tahmasebi et al. (2024) states it, with a strength s:

        g = g0 + s * 4 / ((n - 1) rho**2) * (sum_i L_i g_i - (sum_i L_i / n) sum_i g_i),

    v_i ~ N(0, I) from its own generator; no sharpc code. Buffers: x, g0, sum L_i g_i, sum g_i.
    Every update loops over the parameters in Python, as the authors' FROSAM code does.
    ``draw="per-tensor"`` draws each tensor's piece of v_i by itself (the authors' structure);
    "flat" draws the whole vector at once and splits it, as sharpc does, so both see the same samples.
    """

    def __init__(self, params, rho: float = 0.01, n: int = 2, strength: float = 0.001, seed: int = 0,
                 draw: str = "flat", **sgd):
        self.params = list(params)
        self.sgd = torch.optim.SGD(self.params, **sgd)
        self.rho, self.n, self.strength, self.draw = rho, n, strength, draw
        self.generator = torch.Generator().manual_seed(seed)

    def _sample(self) -> list:
        if self.draw == "per-tensor":
            return [torch.randn(p.shape, generator=self.generator) for p in self.params]
        flat = torch.randn(sum(p.numel() for p in self.params), generator=self.generator)
        return [v.view(p.shape) for v, p in zip(flat.split([p.numel() for p in self.params]), self.params)]

    @torch.no_grad()
    def step(self, closure):
        x = [p.clone() for p in self.params]
        for p in self.params:
            p.grad = None
        with torch.enable_grad():
            loss0 = closure()
        g0 = [p.grad.clone() for p in self.params]
        sum_lg = [torch.zeros_like(p) for p in self.params]
        sum_g = [torch.zeros_like(p) for p in self.params]
        sum_l = torch.zeros(())
        for _ in range(self.n):
            for p, xp, v in zip(self.params, x, self._sample()):
                p.copy_(v).mul_(self.rho).add_(xp)
                p.grad.zero_()
            with torch.enable_grad():
                loss = closure().detach()
            sum_l += loss
            for a, b, p in zip(sum_lg, sum_g, self.params):
                a.add_(p.grad * loss)
                b.add_(p.grad)
        c = self.strength * 4 / ((self.n - 1) * self.rho**2)
        for p, xp, g, a, b in zip(self.params, x, g0, sum_lg, sum_g):
            p.copy_(xp)
            p.grad = g + c * (a - (sum_l / self.n) * b)
        self.sgd.step()
        return loss0


class LeanRun(Run):
    """A Run whose closure calls backward only when gradients are on (what memory="lean" needs)."""

    def __init__(self, label, n, model, x, y, make_opt):
        super().__init__(label, n, model, x, y, make_opt)

        def closure():
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
            if torch.is_grad_enabled():
                loss.backward()
            return loss

        self.step = lambda: self.opt.step(closure)


# ----------------------------------------------------------------------------- sections
def step_ratios(repeats: int, inner: int, quick: bool) -> list[tuple]:
    rows = []
    models = [("MLP 64-128-128-10, batch 128", mlp)] + ([] if quick else [("CNN 3-16-32, 8x8, batch 128", cnn)])
    for name, build in models:
        torch.manual_seed(0)
        model, x = build()
        y = torch.randint(0, 10, (x.shape[0],))
        base = Run("SGD", 0, model, x, y, lambda p: torch.optim.SGD(p, **SGD), style="plain")
        runs = [base,
                Run("SAM", 1, model, x, y, lambda p: SAM(p, **SGD)),
                Run("TraceSAM", 1, model, x, y, lambda p: TraceSAM(p, seed=0, **SGD)),
                Run("FrobSAM", 2, model, x, y, lambda p: FrobSAM(p, seed=0, **SGD)),
                LeanRun("FrobSAM, lean", 2, model, x, y, lambda p: FrobSAM(p, seed=0, memory="lean", **SGD)),
                Run("FrobSAM", 4, model, x, y, lambda p: FrobSAM(p, n_samples=4, seed=0, **SGD))]
        measure(runs, repeats, inner)
        unit = base.median_ms
        rows.append(("step / ((n+1) x SGD step)", f"{name}: SGD step", f"{unit:.3f} ms"))
        for run in runs[1:]:
            rows.append(("step / ((n+1) x SGD step)", f"{name}: {run.label}, n={run.n}",
                         f"{run.median_ms / ((run.n + 1) * unit):.2f} ({run.median_ms:.2f} ms)"))
    return rows


def against_pytorch_optimizer(repeats: int, inner: int) -> list[tuple]:
    try:
        from pytorch_optimizer import SAM as ReferenceSAM
    except ImportError:
        return [("sharpc SAM / pytorch_optimizer.SAM", "-", "pytorch-optimizer not installed")]
    torch.manual_seed(0)
    model, x = mlp()
    y = torch.randint(0, 10, (x.shape[0],))
    ours = Run("sharpc SAM", 1, model, x, y, lambda p: SAM(p, rho=0.05, **SGD))
    theirs = Run("pytorch_optimizer.SAM", 1, model, x, y,
                 lambda p: ReferenceSAM(p, torch.optim.SGD, rho=0.05, **SGD), style="two-step")
    ours.step()
    theirs.step()
    gap = max((a - b).abs().max().item() for a, b in zip(ours.model.parameters(), theirs.model.parameters()))
    measure([ours, theirs], repeats, inner)
    return [("sharpc SAM / pytorch_optimizer.SAM", "MLP, rho 0.05, SGD momentum",
             f"{ours.median_ms / theirs.median_ms:.2f} ({ours.median_ms:.2f} / {theirs.median_ms:.2f} ms; "
             f"max param diff {gap:.0e})")]


def against_algorithm3(repeats: int, inner: int) -> list[tuple]:
    torch.manual_seed(0)
    model, x = mlp()
    y = torch.randint(0, 10, (x.shape[0],))
    rho, strength = 0.01, 0.001  # Algorithm 3's objective L + strength rho^2 R is sharpc's strength * rho^2
    ours = Run("FrobSAM", 2, model, x, y, lambda p: FrobSAM(p, n_samples=2, seed=0, rho=rho, strength=strength * rho**2,
                                                             relative=False, difference="one-sided", **SGD))
    paper = Run("Algorithm 3", 2, model, x, y, lambda p: Algorithm3(p, n=2, seed=0, rho=rho, strength=strength, **SGD))
    ours.step()
    paper.step()
    gap = max((a - b).abs().max().item() for a, b in zip(ours.model.parameters(), paper.model.parameters()))
    measure([ours, paper], repeats, inner)
    return [("FrobSAM / Algorithm 3 transcription", "MLP, n=2, rho 0.01, strength 0.001",
             f"{ours.median_ms / paper.median_ms:.2f} ({ours.median_ms:.2f} / {paper.median_ms:.2f} ms; "
             f"max param diff {gap:.0e})")]


def issue10(repeats: int, inner: int) -> list[tuple]:
    """The runtime's targets side by side in one run (MLP 64-128-128-10, batch 128, SGD momentum 0.9).

    FrobSAM n=4 with one-sided differences (5 passes) against 5 x (forward/backward + SGD
    step) and against the authors'-structure FROSAM transcription (per-parameter Python
    loops, per-tensor draws); the SAM preset against pytorch_optimizer's SAM; and the aten
    ops a step dispatches outside the closure for 4 and for 40 parameter tensors.
    """
    torch.manual_seed(0)
    model, x = mlp()
    y = torch.randint(0, 10, (x.shape[0],))
    n, rho, strength = 4, 0.01, 0.001
    runs = [Run("SGD", 0, model, x, y, lambda p: torch.optim.SGD(p, **SGD), style="plain"),
            Run("FrobSAM", n, model, x, y,
                lambda p: FrobSAM(p, n_samples=n, seed=0, rho=rho, strength=strength * rho**2, relative=False,
                                  difference="one-sided", clip=None, **SGD)),  # Algorithm 2 as written, like the peer
            Run("FROSAM structure", n, model, x, y,
                lambda p: Algorithm3(p, n=n, seed=0, rho=rho, strength=strength, draw="per-tensor", **SGD))]
    try:
        from pytorch_optimizer import SAM as ReferenceSAM
        runs += [Run("SAM", 1, model, x, y, lambda p: SAM(p, rho=0.05, **SGD)),
                 Run("pytorch_optimizer.SAM", 1, model, x, y,
                     lambda p: ReferenceSAM(p, torch.optim.SGD, rho=0.05, **SGD), style="two-step")]
    except ImportError:
        pass
    measure(runs, repeats, inner)
    ms = {run.label: run.median_ms for run in runs}
    rows = [("issue 10: FrobSAM n=4 one-sided / 5 x (fwd/bwd + SGD step)", "MLP, target <= 1.10",
             f"{ms['FrobSAM'] / ((n + 1) * ms['SGD']):.2f} ({ms['FrobSAM']:.2f} / {(n + 1) * ms['SGD']:.2f} ms)"),
            ("issue 10: FrobSAM n=4 one-sided / FROSAM-structure transcription", "MLP, target <= 0.85",
             f"{ms['FrobSAM'] / ms['FROSAM structure']:.2f} ({ms['FrobSAM']:.2f} / {ms['FROSAM structure']:.2f} ms)")]
    if "SAM" in ms:
        rows.append(("issue 10: SAM preset / pytorch_optimizer.SAM", "MLP, rho 0.05, target <= 1.0",
                     f"{ms['SAM'] / ms['pytorch_optimizer.SAM']:.2f} "
                     f"({ms['SAM']:.2f} / {ms['pytorch_optimizer.SAM']:.2f} ms)"))
    else:
        rows.append(("issue 10: SAM preset / pytorch_optimizer.SAM", "-", "pytorch-optimizer not installed"))
    return rows + against_frosam_deep(repeats, inner) + op_counts.rows()


def against_frosam_deep(repeats: int, inner: int, tensors: int = 40) -> list[tuple]:
    """FrobSAM n=4 against the FROSAM-structure transcription where per-tensor loops cost most."""
    torch.manual_seed(0)
    model = op_counts.model_with(tensors)
    x, y = torch.randn(128, 32), torch.randint(0, 32, (128,))
    n, rho, strength = 4, 0.01, 0.001
    ours = Run("FrobSAM", n, model, x, y, lambda p: FrobSAM(p, n_samples=n, seed=0, rho=rho, strength=strength * rho**2,
                                                            relative=False, difference="one-sided", clip=None, **SGD))
    paper = Run("FROSAM structure", n, model, x, y,
                lambda p: Algorithm3(p, n=n, seed=0, rho=rho, strength=strength, draw="per-tensor", **SGD))
    measure([ours, paper], repeats, inner)
    return [("issue 10: FrobSAM n=4 one-sided / FROSAM-structure transcription",
             f"MLP of {tensors} parameter tensors (20 x Linear 32-32), batch 128",
             f"{ours.median_ms / paper.median_ms:.2f} ({ours.median_ms:.2f} / {paper.median_ms:.2f} ms)")]


def vmap_against_loop(repeats: int, n: int = 4, rho: float = 0.01) -> list[tuple]:
    """The n perturbed forward/backward passes of a step: in-place loop against one vmapped call."""
    from torch.func import functional_call, grad_and_value, vmap

    torch.manual_seed(0)
    model, x = mlp()
    y = torch.randint(0, 10, (x.shape[0],))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    generator = torch.Generator().manual_seed(0)

    def loss_of(p, x, y):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

    batched_grad = vmap(grad_and_value(loss_of), in_dims=(0, None, None))

    def vmapped():
        points = {k: v + rho * torch.randn((n, *v.shape), generator=generator) for k, v in params.items()}
        grads, losses = batched_grad(points, x, y)
        return losses

    def loop():
        losses = []
        for _ in range(n):
            with torch.no_grad():
                for p, x0 in zip(model.parameters(), params.values()):
                    p.normal_(generator=generator).mul_(rho).add_(x0)
            for p in model.parameters():
                p.grad = None
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            losses.append(loss.detach())
        return losses

    times = {"loop": [], "vmap": []}
    for f in (loop, vmapped):
        f()
    for _ in range(repeats):
        for name, f in (("loop", loop), ("vmap", vmapped)):
            start = time.perf_counter()
            for _ in range(3):
                f()
            times[name].append((time.perf_counter() - start) / 3)
    loop_ms, vmap_ms = (1e3 * statistics.median(times[k]) for k in ("loop", "vmap"))
    return [("vmap over perturbations / loop", f"MLP, n={n} forward/backward passes",
             f"{vmap_ms / loop_ms:.2f} ({vmap_ms:.2f} / {loop_ms:.2f} ms)")]


def distributed(repeats: int, inner: int) -> list[tuple]:
    rows = []
    one, two = (distributed_step.run(w, repeats=repeats, inner=inner) for w in (1, 2))
    for config in one:
        rows.append(("distributed step, gloo (MLP, batch 128 per rank)", config,
                     f"1 process {one[config]:.2f} ms, 2 processes {two[config]:.2f} ms"))
    return rows


def compile_time(repeats: int) -> list[tuple]:
    times: dict[str, list[float]] = {name: [] for name in compile_latency.COMMANDS}
    for _ in range(repeats):
        for name, command in compile_latency.COMMANDS.items():
            times[name].append(compile_latency.wall_time(command))
    baseline, compile_ = (statistics.median(t) for t in times.values())
    return [("compile latency", 'sharpc compile "sum(l**2)" / import sympy, numpy',
             f"{compile_ / baseline:.2f} ({compile_:.3f} / {baseline:.3f} s)")]


def memory(quick: bool) -> list[tuple]:
    width = 512 if quick else 1024
    rows = [("peak tensor memory / parameter size (step ms)", f"MLP 256-{width}-{width}-10: {r['label']}",
             f"{r['peak']:.2f}, bound {r['bound']} ({r['ms']:.1f} ms)")
            for r in memory_modes.tensor_peaks(width, repeats=3 if quick else 5)]
    return rows


def bf16_delta_error(samples: int = 30) -> list[tuple]:
    """How far bfloat16 autocast moves Delta from its float32 value, by rho.

    Antithetic Deltas (L(x + rho v) + L(x - rho v) - 2 L(x)) / (2 rho**2), whose mean is the
    curvature signal v^T H v / 2 at every rho (the first-order term cancels); reported:
    rms(Delta_bf16 - Delta_fp32) / mean(Delta_fp32) over samples v. "float32 loss" is
    autocast's default (matmuls in bfloat16, cross_entropy in float32); "bfloat16 loss"
    rounds the loss value itself to bfloat16 (8-bit mantissa) before the difference.
    """
    torch.manual_seed(0)
    model, x = mlp()
    y = torch.randint(0, 10, (x.shape[0],))
    params = list(model.parameters())
    x0 = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(0)
    variants = {"fp32": (False, False), "float32 loss": (True, False), "bfloat16 loss": (True, True)}

    @torch.no_grad()
    def losses(offset: list | None) -> dict:
        for p, a, v in zip(params, x0, offset or [0.0] * len(params)):
            p.copy_(a + v)
        out = {}
        for key, (autocast, round_loss) in variants.items():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                value = torch.nn.functional.cross_entropy(model(x), y)
            out[key] = (value.to(torch.bfloat16) if round_loss else value).double()
        return out

    rows = []
    for rho in (0.001, 0.01, 0.1):
        deltas: dict[str, list[float]] = {key: [] for key in variants}
        clean = losses(None)
        for _ in range(samples):
            v = [rho * torch.randn(p.shape, generator=generator) for p in params]
            plus, minus = losses(v), losses([-t for t in v])
            for key in variants:
                deltas[key].append(((plus[key] + minus[key] - 2 * clean[key]) / (2 * rho**2)).item())
        exact = torch.tensor(deltas["fp32"])
        errors = {k: (torch.tensor(deltas[k]) - exact).pow(2).mean().sqrt().item() / exact.mean().abs().item()
                  for k in ("float32 loss", "bfloat16 loss")}
        rows.append(("bf16 autocast: rms Delta error / mean Delta (antithetic)", f"MLP, rho {rho}",
                     f"float32 loss {errors['float32 loss']:.2g}, bfloat16 loss {errors['bfloat16 loss']:.2g}"))
    losses(None)  # parameters back to x
    return rows


def machine() -> str:
    try:
        with open("/proc/meminfo") as f:
            memory_gib = int(f.readline().split()[1]) / 2**20
    except OSError:
        memory_gib = float("nan")
    return (f"{datetime.date.today()}, {platform.platform()}, {os.cpu_count()} cores, {memory_gib:.0f} GiB, "
            f"Python {platform.python_version()}, torch {torch.__version__}, 1 torch thread per process")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and configurations (about a minute)")
    parser.add_argument("--only-issue10", action="store_true", help="the runtime's side-by-side targets alone")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time steps by the process's CPU time, not wall time (for a loaded machine)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.cpu_time:
        CLOCK["clock"] = time.process_time
    repeats, inner = (5, 3) if args.quick else (15, 5)
    sections = [
        lambda: issue10(repeats, inner),
        lambda: step_ratios(repeats, inner, args.quick),
        lambda: against_pytorch_optimizer(repeats, inner),
        lambda: against_algorithm3(repeats, inner),
        lambda: vmap_against_loop(repeats),
        lambda: distributed(repeats, inner),
        lambda: compile_time(3 if args.quick else 10),
        lambda: memory(args.quick),
        lambda: bf16_delta_error(10 if args.quick else 30),
    ]
    if args.only_issue10:
        sections = sections[:1]
    flags = "".join(f" --{k.replace('_', '-')}" for k, v in vars(args).items() if v)
    print(f"{machine()}\ncommand: python benchmarks/run_all.py{flags}\n")
    print("| benchmark | configuration | result |\n|---|---|---|")
    for section in sections:
        for row in section():
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
