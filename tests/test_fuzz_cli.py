"""Fuzzing the CLI over the documented language and options: only the documented outcomes occur.

Every generated command line ends with exit code 0 (ok), 1 (verification failed) or 2 (bad
input) and never with 3 (internal error) or an escaping exception; stderr is at most one line.
"""

from __future__ import annotations

import pytest
from grammar import compile_argv
from hypothesis import HealthCheck, given, settings

from sharpc.cli import main


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse: --help, bad options
        code = stop.code
    return code, capsys.readouterr().err


def _check(argv: list[str], capsys) -> None:
    code, err = _run(argv, capsys)
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err and err.count("\n") <= 1, (argv, err)


FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                    HealthCheck.function_scoped_fixture])


EMIT_PATH = "fuzz_module.py"


@settings(max_examples=40, **FUZZ)
@given(compile_argv(EMIT_PATH))
def test_generated_command_lines_end_in_a_documented_outcome(capsys, monkeypatch, tmp_path, argv):
    monkeypatch.chdir(tmp_path)
    _check(argv, capsys)


@pytest.mark.slow
@settings(max_examples=600, **FUZZ)
@given(compile_argv(EMIT_PATH))
def test_many_generated_command_lines_end_in_a_documented_outcome(capsys, monkeypatch, tmp_path, argv):
    monkeypatch.chdir(tmp_path)
    _check(argv, capsys)


@pytest.mark.parametrize("argv", [["--version"], ["list"], ["--help"], ["compile", "--help"], [], ["nope"]])
def test_other_commands_end_in_a_documented_outcome(capsys, argv):
    code, err = _run(argv, capsys)
    assert code in (0, 2) and "Traceback" not in err
