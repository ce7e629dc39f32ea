"""Turn the reliability suite's JUnit XML into the table `make reliability` keeps in docs (test · expectation · result).

The expectation is the test's own name (they are written as sentences of what must hold); the result is what pytest
measured on this machine, with its wall time, so the table is evidence and not a claim.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path


def rows(junit: Path) -> list[tuple[str, str, str]]:
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        module = (case.get("classname") or "").rsplit(".", 1)[-1]
        expectation = name.removeprefix("test_").split("[")[0].replace("_", " ")
        if case.find("failure") is not None or case.find("error") is not None:
            result = "**FAILED**"
        elif case.find("skipped") is not None:
            result = f"skipped: {(case.find('skipped').get('message') or '')[:80]}"
        else:
            result = "passed"
        params = f" `[{name.split('[', 1)[1]}`" if "[" in name else ""
        out.append((f"{module}{params}", expectation, f"{result} ({float(case.get('time', 0)):.1f} s)"))
    return out


def main(junit: str, out: str) -> int:
    found = rows(Path(junit))
    failed = sum("FAILED" in r[2] for r in found)
    lines = [f"# Reliability suite (`make reliability`), {date.today()}", "",
             f"{len(found)} checks, {failed} failed, on this machine (2-core x86_64 CPU). Raw: `junit.xml`.", "",
             "| test | expectation | result |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in found]
    Path(out).write_text("\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
