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
    "__import__('os').system('echo pwned')", "l**(9**9**9)", "sum(l", "l", "max(l)", "x + 1", "",
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
