"""Function coverage of the GPU-only code, printed by `make test`: of mmhpc/gpucheck.py and
mmhpc/system/, how many functions the tests entered (coverage.py's JSON report, which has a region
per function), and the names of those never entered. Usage: python env/coverage_functions.py
coverage.json"""
from __future__ import annotations

import json
import sys


def main(path: str) -> int:
    files = json.load(open(path))["files"]
    total = entered = 0
    missed = []
    for name, data in sorted(files.items()):
        for func, region in data.get("functions", {}).items():
            if not func:  # the module's top level
                continue
            total += 1
            if region["summary"]["covered_lines"]:
                entered += 1
            else:
                missed.append(f"{name}:{func}")
        lines = data["summary"]
        print(f"coverage {name}: lines {lines['percent_covered']:.0f} %")
    print(f"coverage of gpucheck.py and mmhpc/system/: {entered}/{total} functions entered"
          + (f"; never entered: {', '.join(missed)}" if missed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
