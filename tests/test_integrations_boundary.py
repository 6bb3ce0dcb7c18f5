"""The compile side never imports sharpc.integrations, and that package imports no framework."""

from __future__ import annotations

import subprocess
import sys


def test_compiling_and_building_optimizers_never_import_the_integrations():
    code = ("import sys, sharpc, sharpc.optim, sharpc.cli; sharpc.compile('sum(l**2)').optimizer_class(); "
            "import sharpc.integrations; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'transformers', 'accelerate')"
            " or m.startswith('sharpc.integrations.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
