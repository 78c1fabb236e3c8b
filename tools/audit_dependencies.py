"""Audit the pinned runtime dependencies with pip-audit; `make audit` runs this.

Known vulnerabilities fail the run. When pip-audit cannot consult its vulnerability
database (no route to it, or the index in use has no vulnerability data), the run says so
plainly and passes: an unreachable database is reported, never mistaken for a clean bill.
"""

from __future__ import annotations

import json
import subprocess  # runs pip-audit only  # nosec B404
import sys
import tempfile
from pathlib import Path

TIMEOUT_SECONDS = 600


def main(requirements: str) -> int:
    with tempfile.TemporaryDirectory() as workdir:
        report_path = Path(workdir) / "report.json"
        command = [sys.executable, "-m", "pip_audit", "--requirement", requirements, "--format", "json",
                   "--output", str(report_path), "--progress-spinner", "off"]
        try:
            finished = subprocess.run(  # fixed argument list, no shell  # nosec B603
                command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
            )
        except subprocess.TimeoutExpired:
            print(f"pip-audit: no answer within {TIMEOUT_SECONDS}s; dependencies NOT audited (not fatal)")
            return 0
        if not report_path.exists():
            print("pip-audit could not run to completion; dependencies NOT audited (not fatal):")
            print(finished.stderr.strip()[-2000:])
            return 0
        report = json.loads(report_path.read_text())
    dependencies = report.get("dependencies", [])
    audited = [dep for dep in dependencies if "skip_reason" not in dep]
    vulnerable = [dep for dep in audited if dep.get("vulns")]
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions", [])) or "none yet"
            print(f"VULNERABLE {dep['name']} {dep['version']}: {vuln['id']} (fixed in: {fixes})")
    if vulnerable:
        return 1
    skipped = len(dependencies) - len(audited)
    if not audited:
        print(f"pip-audit could not consult its vulnerability database for any of the {skipped} "
              "dependencies (no route to it from here?); dependencies NOT audited (not fatal)")
    else:
        print(f"pip-audit: {len(audited)} dependencies audited, no known vulnerabilities"
              + (f"; {skipped} could not be looked up" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "requirements.txt"))
