"""Median wall time of `sharpc compile "sum(l**2)"` (verification included) next to
`python -c "import sympy, numpy"`, measured side by side in one run.

    python benchmarks/compile_latency.py [--repeats 15]

Targets (issue 2): at most 0.8 s, and at most 2.5x the bare import.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import sympy, numpy": [sys.executable, "-c", "import sympy, numpy"],
    'sharpc compile "sum(l**2)"': [sys.executable, "-m", "sharpc", "compile", "sum(l**2)"],
}


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    repeats = parser.parse_args().repeats
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):  # interleaved, so drift hits both alike
        for name, command in COMMANDS.items():
            times[name].append(wall_time(command))
    baseline, compile_ = (statistics.median(t) for t in times.values())
    for name, samples in times.items():
        print(f"{name:<30} median {statistics.median(samples):.3f} s  (min {min(samples):.3f}, max {max(samples):.3f})")
    print(f"{'ratio':<30} {compile_ / baseline:.2f}  (target <= 2.5; absolute target <= 0.8 s)")


if __name__ == "__main__":
    main()
