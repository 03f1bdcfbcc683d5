"""``make demo`` (python -m demo) runs a job through its own cluster and proves its gateway curl line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.test_readme_commands import ROOT

#: The demo's whole run: cluster start, one simulated job (4 s of GPU time), the gateway check, the stop.
DEMO_TIMEOUT_S = 180


def test_the_demo_runs_its_job_and_the_curl_line_it_prints_reads_that_job_through_the_gateway(
    tmp_path: Path,
) -> None:
    # Given no terminal (the demo stops at once) and a folder of its own
    env = {**os.environ, "DEMO_DIR": str(tmp_path / "demo")}
    env.pop("COMFYUI_URL", None)
    # When it runs
    done = subprocess.run([sys.executable, "-m", "demo"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, check=False)
    # Then it exits 0, which it does only when the gateway answered its curl line with the job it ran
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    job_id = re.search(r"submitted job ([0-9a-f]{32})", done.stdout)
    assert job_id is not None, done.stdout
    assert "status COMPLETED; output the result above" in done.stdout
    # and it prints the gateway's loopback URL and that curl line, with the key and the job's status route
    gateway = re.search(r"^Gateway: (http://127\.0\.0\.1:\d+)  \(API key demo: (\S+)\)$", done.stdout, re.MULTILINE)
    assert gateway is not None, done.stdout
    url, key = gateway.groups()
    assert f"curl -sS -H 'Authorization: Bearer {key}' {url}/v2/demo/status/{job_id.group(1)}" in done.stdout
