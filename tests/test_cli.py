"""The command line: golden output, exit codes, hostile input, and no torch on the compile path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sharpc.cli import main

GOLDEN = Path(__file__).parent / "golden"
# Regenerate after an intended change: SHARPC_UPDATE_GOLDEN=1 pytest tests/test_cli.py
UPDATE = os.environ.get("SHARPC_UPDATE_GOLDEN") == "1"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name, argv", [
    ("frobenius.txt", ["compile", "sum(l**2)"]),
    ("shifted_det_d3.txt", ["compile", "prod(1 - l/10)", "--d", "3", "--samples", "5000"]),
    ("moments.json", ["compile", "sum(l**3) - 2*sum(l)*sum(l**2)", "--json", "--no-verify"]),
    ("det_hypercube.json", ["compile", "prod(l)", "--det-sampling", "hypercube", "--half-width", "0.01", "--json"]),
    ("list.txt", ["list"]),
])
def test_golden_output(capsys, name, argv):
    code, out, err = run(capsys, *argv)
    assert code == 0 and err == ""
    path = GOLDEN / name
    if UPDATE:
        path.write_text(out)
    assert out == path.read_text()


def test_json_is_one_object_with_the_derivation_and_verification(capsys):
    code, out, _ = run(capsys, "compile", "2*sum(l**2)", "--json", "--samples", "2000")
    payload = json.loads(out)
    assert code == 0
    assert payload["strategy"] == "table1" and payload["m"] == 2 and payload["scale"] == "2"
    assert payload["constants_dropped"] == ["positive factor 2: target = 2 * S"]
    assert payload["verification"]["passed"] is True
    assert len(payload["verification"]["monte_carlo"]) == 16


@pytest.mark.parametrize("expression", [
    "__import__('os').system('echo pwned')", "l**(9**9**9)", "sum(l", "l", "max(l)**2", "x + 1", "",
])
def test_bad_input_exits_2_with_one_line_and_no_traceback(capsys, expression):
    code, out, err = run(capsys, "compile", expression)
    assert code == 2 and out == ""
    assert err.startswith("sharpc: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_verification_failure_exits_1(capsys, monkeypatch):
    import sharpc.verify

    monkeypatch.setattr(sharpc.verify, "certify", lambda measure: ("forced failure", False))
    code, out, _ = run(capsys, "compile", "sum(l**2)", "--samples", "1000")
    assert code == 1 and "VERIFICATION FAILED" in out


def test_module_entry_point_and_console_script_do_not_import_torch(tmp_path):
    probe = ("import sys, runpy; sys.argv = ['sharpc', 'compile', 'sum(l**2)', '--samples', '1000'];"
             "\ntry: runpy.run_module('sharpc', run_name='__main__')\nexcept SystemExit as e: code = e.code"
             "\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().endswith("NO-TORCH 0"), result.stderr


def test_emit_writes_a_standalone_module(capsys, tmp_path):
    path = tmp_path / "frob_sam.py"
    code, out, _ = run(capsys, "compile", "sum(l**2)", "--no-verify", "--emit", str(path), "--name", "FrobSAM")
    assert code == 0 and f"wrote {path}" in out
    source = path.read_text()
    compile(source, str(path), "exec")  # valid Python (it is run end to end in test_emit.py)
    assert "class FrobSAM(PhiPsiSAM)" in source and "import sharpc" not in source


def test_emit_refuses_a_bad_class_name(capsys, tmp_path):
    code, _, err = run(capsys, "compile", "sum(l**2)", "--no-verify", "--emit", str(tmp_path / "x.py"),
                       "--name", "not a name")
    assert code == 2 and "cannot name a generated optimizer class" in err
    assert not (tmp_path / "x.py").exists()


# ---------------------------------------------------------------- options, exit codes, no tracebacks
@pytest.mark.parametrize("option", [
    ["--half-width", "inf"], ["--half-width", "0"], ["--half-width", "nan"], ["--seed", "-1"],
    ["--seed", str(2**64)], ["--samples", "100000000000"], ["--samples", "1e11"], ["--samples", "1"],
    ["--bound", "1e300"], ["--bound", "-2"], ["--d", "0"], ["--d", "3.5"], ["--d", str(10**13)],
])
def test_out_of_range_options_exit_2_in_one_line(capsys, option):
    with pytest.raises(SystemExit) as stop:
        main(["compile", "max(l)", "--d", "3", *option])
    _, err = capsys.readouterr()
    assert stop.value.code == 2
    assert err.count("\n") == 1 and "must be" in err and "Traceback" not in err


@pytest.mark.parametrize("options", [dict(bound=1e300), dict(bound=float("inf")), dict(half_width=float("inf")),
                                     dict(half_width=1e300), dict(d=10**13), dict(bound=10**400)])
def test_api_out_of_range_options_raise_sharpc_error(options):
    import sharpc

    with pytest.raises(sharpc.SharpcError, match="must be"):
        sharpc.compile("max(l)", **({"d": 3} | options))


@pytest.mark.parametrize("options", [dict(seed=-1), dict(samples=10**11), dict(samples=1), dict(seed=1.5)])
def test_api_verify_options_raise_sharpc_error(options):
    import sharpc

    with pytest.raises(sharpc.SharpcError, match="must be"):
        sharpc.compile("sum(l)").verify(**options)


def test_version(capsys):
    import sharpc

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"sharpc {sharpc.__version__}"


def test_internal_error_exits_3_with_one_line_and_a_report_hint(capsys, monkeypatch):
    import sharpc

    monkeypatch.setattr(sharpc, "compile", lambda *a, **k: 1 / 0)
    code, out, err = run(capsys, "compile", "sum(l)")
    assert code == 3 and out == ""
    assert err.count("\n") == 1 and "ZeroDivisionError" in err and "report" in err


def test_closed_pipe_ends_quietly():
    shell = f"{sys.executable} -m sharpc list | head -1"
    result = subprocess.run(shell, shell=True, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert result.stdout.startswith("name") and result.stdout.count("\n") == 1
    assert result.stderr == ""


# ---------------------------------------------------------------- emit hygiene
@pytest.mark.parametrize("name", ["super", "float", "sum", "len", "torch", "ｔｏｒｃｈ", "PhiPsiSAM", "class"])
def test_emit_refuses_names_that_shadow_what_the_module_uses(capsys, tmp_path, name):
    code, _, err = run(capsys, "compile", "sum(l**2)", "--no-verify", "--emit", str(tmp_path / "x.py"),
                       "--name", name)
    assert code == 2 and "cannot name a generated optimizer class" in err
    assert not (tmp_path / "x.py").exists()


def test_emit_needs_a_path(capsys):
    code, _, err = run(capsys, "compile", "sum(l)", "--no-verify", "--emit", "")
    assert code == 2 and "--emit needs a file path" in err


def test_emit_does_not_overwrite_without_force(capsys, tmp_path):
    path = tmp_path / "m.py"
    path.write_text("keep me")
    code, _, err = run(capsys, "compile", "sum(l)", "--no-verify", "--emit", str(path))
    assert code == 2 and "exists" in err and path.read_text() == "keep me"
    code, _, _ = run(capsys, "compile", "sum(l)", "--no-verify", "--emit", str(path), "--force")
    assert code == 0 and "class SharpSAM(PhiPsiSAM)" in path.read_text()


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_emit_does_not_follow_symlinks(capsys, tmp_path, force):
    victim, link = tmp_path / "victim.txt", tmp_path / "m.py"
    victim.write_text("keep me")
    link.symlink_to(victim)
    code, _, err = run(capsys, "compile", "sum(l)", "--no-verify", "--emit", str(link), *force)
    assert code == 2 and "symbolic link" in err and victim.read_text() == "keep me"


def test_no_module_is_written_when_verification_fails(capsys, monkeypatch, tmp_path):
    import sharpc.verify

    monkeypatch.setattr(sharpc.verify, "certify", lambda measure: ("forced failure", False))
    path = tmp_path / "m.py"
    code, out, _ = run(capsys, "compile", "sum(l**2)", "--samples", "1000", "--emit", str(path))
    assert code == 1 and "not written" in out and not path.exists()
    code, _, _ = run(capsys, "compile", "sum(l**2)", "--no-verify", "--emit", str(path))
    assert code == 0 and path.exists()


@pytest.mark.parametrize("expression", ["sum(l)/(cos(1)**2+sin(1)**2-1)", "sum(l)*(sqrt(2)*sqrt(3)-sqrt(6))**-1",
                                        "sum(l/(exp(1)*exp(-1)-1))"])
def test_zero_constant_denominators_are_refused_at_compile_time(capsys, expression):
    code, _, err = run(capsys, "compile", expression, "--no-verify")
    assert code == 2 and "division by zero" in err
