"""``sharpc compile | list``: the compiler from the shell.

Exit codes: 0 ok, 1 verification failed, 2 bad input. argparse keeps start-up cheap
(the compile path imports SymPy and NumPy, never torch).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import sympy as sp

from .errors import SharpcError
from .parse import LANGUAGE_HELP

EXIT_OK, EXIT_UNVERIFIED, EXIT_BAD_INPUT = 0, 1, 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    from .derive import REGISTRY

    parser = argparse.ArgumentParser(prog="sharpc", description="Compile Hessian sharpness measures "
                                     "into (phi, psi, mu)-SAM optimizers.")
    commands = parser.add_subparsers(dest="command", required=True)
    comp = commands.add_parser("compile", help="derive and verify (phi, psi, mu) for a target",
                               description="Derive and verify (phi, psi, mu) for a target in the "
                               "Hessian eigenvalues l, e.g. 'sum(l**2)' or 'prod(1 - l/10)'.",
                               epilog=LANGUAGE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    comp.add_argument("expression", help="target in eigenvalues l, e.g. 'sum(l**2)' "
                      "(put -- before a target that starts with '-')")
    comp.add_argument("--d", type=_positive_int, default=None, help="number of eigenvalues (default: symbolic)")
    comp.add_argument("--strategy", choices=list(REGISTRY), default=None, help="force one derivation strategy")
    comp.add_argument("--det-sampling", choices=("lebesgue", "hypercube"), default="lebesgue",
                      help="sampling for determinant measures (default: lebesgue)")
    comp.add_argument("--bound", type=float, default=None,
                      help="spectrum bound |l_i| <= BOUND (needed by the universality strategies)")
    comp.add_argument("--invariant", choices=("scale",), default=None,
                      help="ask for a measure invariant under positive diagonal rescalings (adaptive mu)")
    comp.add_argument("--force", action="store_true", help="allow constructions above their cost limits")
    comp.add_argument("--degree", type=_positive_int, default=None,
                      help="polynomial degree / p-norm order of approximations (default: chosen by bias and variance)")
    comp.add_argument("--budget", type=_positive_int, default=16,
                      help="samples per step assumed when choosing the degree (default 16)")
    comp.add_argument("--size", type=_positive_int, default=None,
                      help="number of eigenvalues (parameters) assumed when choosing the degree without --d")
    comp.add_argument("--half-width", type=float, default=1.0, help="hypercube/truncation half-width (default 1)")
    comp.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    comp.add_argument("--no-verify", action="store_true", help="skip verification")
    comp.add_argument("--seed", type=int, default=0, help="Monte Carlo seed (default 0)")
    comp.add_argument("--samples", type=_positive_int, default=10_000, help="Monte Carlo samples per case")
    comp.add_argument("--emit", metavar="PATH", default=None, help="write a standalone torch module to PATH")
    comp.add_argument("--name", default=None, help="class name of the emitted optimizer")
    commands.add_parser("list", help="the catalog of named measures")
    return parser


def _describe(measure, report) -> str:
    args = ", ".join(map(str, measure.phi_args))
    psi = ", ".join(map(sp.sstr, measure.psi))
    lines = [
        f"target       {sp.sstr(measure.target)}",
        f"strategy     {measure.strategy}",
        f"phi          ({args}) -> {sp.sstr(measure.phi)}",
        f"psi          t -> {psi if measure.m == 1 else f'({psi})'}",
    ]
    for number, group in enumerate(measure.groups, start=1):
        comps = ", ".join(f"psi_{c + 1}" for c in group.components)
        lines.append(f"mu group {number}   {group.distribution.describe()} for {comps}")
    lines += [
        f"invariant    {'; '.join(measure.invariances) or 'no group declared'} (S inherits mu's invariances "
        "when L has them, Theorem 11)",
        f"m            {measure.m}",
        f"cost         {measure.cost()} gradient evaluations per step"
        + (" (n samples per random group)" if "n" in measure.cost() else " (point masses need one pass each)"),
        f"dropped      {'; '.join(measure.constants_dropped) or 'nothing'}",
        f"assumptions  {'; '.join(measure.assumptions) or 'none'}",
        f"domain       {measure.domain.describe()}",
        f"exact        {'yes' if measure.exact else 'no (approximation)'}",
        *([f"error bound  |target - S| <= {sp.sstr(measure.error_bound)}"] if measure.error_bound is not None else []),
        *([f"samples      about {measure.recommended_samples(0.1)} per step for a 10% standard error "
           f"(worst of spread and clustered probe spectra)"] if measure.variance_per_sample is not None else []),
        "",
        "derivation",
        *(f"  {i}. {step}" for i, step in enumerate(measure.steps, start=1)),
    ]
    if report is not None:
        verdict = {True: "proved", False: "FAILED", None: "not available"}[report.certified]
        lines += ["", "verification", f"  certificate: {report.certificate} — {verdict}"]
        lines += [f"  note: {note}" for note in report.notes]
        if report.cases:
            lines.append(f"  Monte Carlo: {len(report.cases)} random Hessians, {report.samples} samples each, "
                         f"pass if |z| <= {report.z_threshold}")
            lines += ["  " + row for row in report.table().splitlines()]
        if not report.passed:
            result = "VERIFICATION FAILED"
        else:
            result = "verified" if report.checked else "not verified: no check applies (see the notes)"
        lines.append(f"result: {result}")
    return "\n".join(lines)


def _compile(options: argparse.Namespace) -> int:
    from . import compile as compile_measure

    measure = compile_measure(options.expression, d=options.d, strategy=options.strategy, bound=options.bound,
                              invariant=options.invariant, force=options.force,
                              det_sampling=options.det_sampling, half_width=options.half_width,
                              degree=options.degree, budget=options.budget, size=options.size)
    report = None if options.no_verify else measure.verify(seed=options.seed, samples=options.samples)
    if options.emit:
        from .emit.standalone import emit_module

        source = emit_module(measure, name=options.name or "SharpSAM")  # fails before touching the file
        with open(options.emit, "w", encoding="utf-8") as handle:
            handle.write(source)
    if options.json:
        payload = measure.to_dict()
        payload["verification"] = None if report is None else report.to_dict()
        print(json.dumps(payload, indent=2))
    else:
        print(_describe(measure, report))
        if options.emit:
            print(f"\nwrote {options.emit}")
    return EXIT_OK if report is None or report.passed else EXIT_UNVERIFIED


def _list() -> int:
    from . import compile as compile_measure
    from .catalog import CATALOG

    print(f"{'name':<17}{'expression':<21}{'strategy':<10}{'m':>2}  description")
    for entry in CATALOG:
        measure = compile_measure(entry.expression, **entry.options)
        print(f"{entry.name:<17}{entry.expression:<21}{measure.strategy:<10}{measure.m:>2}  {entry.description}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    try:
        return _compile(options) if options.command == "compile" else _list()
    except SharpcError as error:
        print(f"sharpc: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        print(f"sharpc: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
