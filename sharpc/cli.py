"""``sharpc compile | list``: the compiler from the shell.

Exit codes: 0 ok, 1 verification failed, 2 bad input, 3 internal error (a bug: one line
asking for a report, never a traceback). argparse keeps start-up cheap (the compile path
imports SymPy and NumPy, never torch). Every option is checked against the same ranges
as the API (:mod:`sharpc.options`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

import sympy as sp

from . import __version__
from .errors import SharpcError
from .options import (
    APPROXIMATION_RANGE,
    BOUND_RANGE,
    HALF_WIDTH_RANGE,
    LOWER_BOUND_RANGE,
    MAX_D,
    SAMPLES_RANGE,
    SEED_RANGE,
    check_float,
    check_int,
)
from .parse import LANGUAGE_HELP
from .verify import BLOCK_BOUND, BLOCKS, EXACT, IDENTITY_TOLERANCE, PLUG_IN

EXIT_OK, EXIT_UNVERIFIED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
REPORT_HINT = "this is a bug in sharpc; please report it with the command line that caused it"


def _ranged(check: Callable, low, high) -> Callable[[str], object]:
    """An argparse type: parse the text as int or float, then apply the API's range check."""
    parse_number = int if check is check_int else float

    def convert(text: str):
        try:
            value: object = parse_number(text)
        except ValueError:
            value = text  # the range check reports it as not a number
        try:
            return check("value", value, low, high)
        except SharpcError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one --help away) and exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    from .derive import REGISTRY

    parser = _Parser(prog="sharpc", description="Compile Hessian sharpness measures "
                                     "into (phi, psi, mu)-SAM optimizers.",
                                     epilog="exit codes: 0 ok, 1 verification failed, 2 bad input, 3 internal error")
    parser.add_argument("--version", action="version", version=f"sharpc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    comp = commands.add_parser("compile", help="derive and verify (phi, psi, mu) for a target",
                               description="Derive and verify (phi, psi, mu) for a target in the "
                               "Hessian eigenvalues l, e.g. 'sum(l**2)' or 'prod(1 - l/10)'.",
                               epilog=LANGUAGE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    comp.add_argument("expression", help="target in eigenvalues l, e.g. 'sum(l**2)' "
                      "(put -- before a target that starts with '-')")
    comp.add_argument("--d", type=_ranged(check_int, 1, MAX_D), default=None,
                      help=f"number of eigenvalues, 1..{MAX_D:.0e} (default: symbolic)")
    comp.add_argument("--strategy", choices=list(REGISTRY), default=None, help="force one derivation strategy")
    comp.add_argument("--det-sampling", choices=("lebesgue", "hypercube"), default="lebesgue",
                      help="sampling for determinant measures: lebesgue (exact, importance-sampled "
                           "under --lower-bound; default) or hypercube (the paper's Det-SAM, approximate)")
    comp.add_argument("--bound", type=_ranged(check_float, *BOUND_RANGE), default=None,
                      help="spectrum bound |l_i| <= BOUND, in [{:g}, {:g}] (needed by the universality "
                      "strategies)".format(*BOUND_RANGE))
    comp.add_argument("--invariant", choices=("scale",), default=None,
                      help="ask for a measure invariant under positive diagonal rescalings (adaptive mu)")
    comp.add_argument("--force", action="store_true",
                      help="allow constructions above their cost limits; let --emit replace an existing file")
    comp.add_argument("--half-width", type=_ranged(check_float, *HALF_WIDTH_RANGE), default=1.0,
                      help="hypercube half-width, in [{:g}, {:g}] (default 1)".format(*HALF_WIDTH_RANGE))
    comp.add_argument("--lower-bound", type=_ranged(check_float, *LOWER_BOUND_RANGE), default=1.0,
                      help="stated lower bound L <= l_i for the Lebesgue determinant rows, in [{:g}, {:g}] "
                      "(default 1)".format(*LOWER_BOUND_RANGE))
    comp.add_argument("--degree", type=_ranged(check_int, 1, APPROXIMATION_RANGE["degree"]), default=None,
                      help="polynomial degree / p-norm order of approximations (default: chosen by bias and variance)")
    comp.add_argument("--budget", type=_ranged(check_int, 1, APPROXIMATION_RANGE["budget"]), default=16,
                      help="samples per step assumed when choosing the degree (default 16)")
    comp.add_argument("--size", type=_ranged(check_int, 1, APPROXIMATION_RANGE["size"]), default=None,
                      help="number of eigenvalues (parameters) assumed when choosing the degree without --d")
    comp.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    comp.add_argument("--no-verify", action="store_true", help="skip verification")
    comp.add_argument("--seed", type=_ranged(check_int, *SEED_RANGE), default=0,
                      help="Monte Carlo seed, 0..2**63-1 (default 0)")
    comp.add_argument("--samples", type=_ranged(check_int, *SAMPLES_RANGE), default=10_000,
                      help="Monte Carlo samples per case, {}..{} (default 10000)".format(*SAMPLES_RANGE))
    comp.add_argument("--sampler", choices=("numpy", "torch"), default="numpy",
                      help="draw the verification samples with NumPy (default) or with the optimizer's own torch "
                      "sampler (end to end; imports torch)")
    comp.add_argument("--emit", metavar="PATH", default=None,
                      help="write a standalone torch module to PATH (a new file: see --force; only when "
                      "verification passes or --no-verify is given)")
    comp.add_argument("--name", default=None, help="class name of the emitted optimizer (default SharpSAM)")
    commands.add_parser("list", help="the catalog of named measures")
    return parser


_METHOD_TEXT = {
    EXACT: lambda report: (f"{EXACT}: pass if scale * phi(exact integrals) + offset = target to "
                           f"{IDENTITY_TOLERANCE:g} and |z| <= {BLOCK_BOUND:g} ({BLOCKS} blocks)"),
    PLUG_IN: lambda report: f"{PLUG_IN}: pass if |z| <= {report.z_threshold:g}",
}


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
        _cost(measure),
        f"dropped      {'; '.join(measure.constants_dropped) or 'nothing'}",
        f"assumptions  {'; '.join(measure.assumptions) or 'none'}",
        f"domain       {measure.domain.describe()}",
        f"exact        {'yes' if measure.exact else 'no (approximation)'}",
        f"error bound  {_error_bound(measure)}",
        *_samples(measure),
        "",
        "derivation",
        *(f"  {i}. {step}" for i, step in enumerate(measure.steps, start=1)),
    ]
    if report is not None:
        verdict = {True: "proved", False: "FAILED", None: "not available"}[report.certified]
        lines += ["", "verification", f"  certificate: {report.certificate} — {verdict}"]
        lines += [f"  note: {note}" for note in report.notes]
        if report.cases:
            lines.append(f"  checks: {len(report.cases)} random Hessians, {report.samples} samples each")
            lines += [f"  method: {_METHOD_TEXT[method](report)}" for method in report.methods]
            lines += ["  " + row for row in report.table().splitlines()]
        if not report.passed:
            result = "VERIFICATION FAILED"
        else:
            result = "verified" if report.checked else "not verified: no check applies (see the notes)"
        lines.append(f"result: {result}")
    return "\n".join(lines)


def _error_bound(measure) -> str:
    """|target - S|: the approximation's bound, 0 for an exact measure, or what is known."""
    if measure.error_bound is not None:
        return f"|target - S| <= {sp.sstr(measure.error_bound)}"
    return "0 (exact)" if measure.exact else "none stated (see assumptions)"


def _default_difference(measure) -> str:
    """The difference the generated class uses by default (its cost doubles when antithetic)."""
    from .emit import recommended

    return recommended(measure)["difference"]


def _cost(measure) -> str:
    """Passes per step under the generated class's default difference (antithetic pairs count two)."""
    difference = _default_difference(measure)
    why = "n samples per random group" if any(not g.distribution.deterministic for g in measure.groups) \
        else "one per point mass"
    pairs = ", each an antithetic pair x +- rho v" if difference == "antithetic" else ""
    return f"cost         {measure.cost(difference=difference)} gradient evaluations per step ({why}{pairs})"


def _samples(measure) -> list[str]:
    """The per-step sample count a 10% standard error needs, where the estimate is random."""
    if all(group.distribution.deterministic for group in measure.groups):
        return ["samples      1 per step (point masses: the estimate has no sampling variance)"]
    if measure.variance_per_sample is None:
        return []
    return [f"samples      about {measure.recommended_samples(0.1)} per step for a 10% standard error "
            "(worst of spread and clustered probe spectra)"]


def _compile(options: argparse.Namespace) -> tuple[str, int]:
    """(what to print, exit code): the module is written only when verification passed or was skipped."""
    from . import compile as compile_measure
    from .emit.standalone import emit_module

    if options.emit == "":
        raise SharpcError("--emit needs a file path")
    if options.emit:
        _check_new_file(options.emit, options.force)
    measure = compile_measure(options.expression, d=options.d, strategy=options.strategy, bound=options.bound,
                              invariant=options.invariant, force=options.force,
                              det_sampling=options.det_sampling, half_width=options.half_width,
                              lower_bound=options.lower_bound,
                              degree=options.degree, budget=options.budget, size=options.size)
    source = emit_module(measure, name=options.name or "SharpSAM") if options.emit else None  # bad names fail here
    report = None if options.no_verify else measure.verify(seed=options.seed, samples=options.samples,
                                                            sampler=options.sampler)
    code = EXIT_OK if report is None or report.passed else EXIT_UNVERIFIED
    if source is not None and code == EXIT_OK:
        _write_new_file(options.emit, source, options.force)
    if options.json:
        payload = measure.to_dict()
        payload["cost_per_step"] = measure.cost(difference=_default_difference(measure))
        payload["verification"] = None if report is None else report.to_dict()
        return json.dumps(payload, indent=2), code
    text = _describe(measure, report)
    if source is not None:
        text += (f"\n\nwrote {options.emit}" if code == EXIT_OK else
                 f"\n\nnot written: {options.emit} (verification failed; --no-verify writes it anyway)")
    return text, code


def _check_new_file(path: str, replace: bool) -> None:
    """Refuse before any work: a symbolic link at ``path``, or an existing file without --force."""
    if os.path.islink(path):
        raise SharpcError(f"--emit {path}: is a symbolic link; sharpc does not follow it (remove it or choose "
                          "another path)")
    if os.path.lexists(path) and not replace:
        raise SharpcError(f"--emit {path}: the file exists; pass --force to replace it")


def _write_new_file(path: str, text: str, replace: bool) -> None:
    """Write without following a symbolic link (O_NOFOLLOW) and, without --force, only a new file (O_EXCL)."""
    _check_new_file(path, replace)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | (0 if replace else os.O_EXCL)
    with os.fdopen(os.open(path, flags, 0o644), "w", encoding="utf-8") as handle:
        handle.write(text)


def _list() -> tuple[str, int]:
    from . import compile as compile_measure
    from .catalog import CATALOG

    lines = [f"{'name':<17}{'expression':<21}{'strategy':<12}{'m':>2}  description"]
    for entry in CATALOG:
        measure = compile_measure(entry.expression, **entry.options)
        lines.append(f"{entry.name:<17}{entry.expression:<21}{measure.strategy:<12}{measure.m:>2}  "
                     f"{entry.description}")
    return "\n".join(lines), EXIT_OK


def _print_quietly(text: str) -> None:
    """Print to stdout; a reader that closed the pipe (``sharpc list | head``) ends output silently."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the module docstring)."""
    options = _parser().parse_args(argv)
    try:
        text, code = _compile(options) if options.command == "compile" else _list()
    except (SharpcError, OSError) as error:
        print(f"sharpc: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as error:  # noqa: BLE001 - a bug: one line and exit 3, never a traceback
        print(f"sharpc: internal error: {type(error).__name__}: {_one_line(error)[:300]}; {REPORT_HINT}",
              file=sys.stderr)
        return EXIT_INTERNAL
    _print_quietly(text)
    return code
