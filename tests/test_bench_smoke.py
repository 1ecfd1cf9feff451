"""The benchmark suite keeps working: a --quick run of bench/run.py for wfctl alone.

No timing is asserted here; the numbers of a quick run mean nothing. The suite itself is
run by hand (`python bench/run.py`), see bench/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = {"chain-command", "chain-python", "fanout", "loop", "startup", "floor"}


def test_quick_run_prints_the_table_and_writes_every_scenario(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--tools", "wfctl", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    assert "| scenario | tool | N | wall s (median) | per-step ms |" in done.stdout
    assert "Targets (wfctl)" in done.stdout

    document = json.loads(out.read_text())
    assert set(document["scenarios"]) == SCENARIOS
    for name, scenario in document["scenarios"].items():
        assert scenario["rows"], f"no rows for {name}"
        for row in scenario["rows"]:
            assert row["status"] == "ok", row
            assert row["wall_s"] is not None and row["wall_s"] > 0, row
    machine = document["machine"]
    for key in ("platform", "cpu_model", "cpu_count", "memory_gb", "python"):
        assert key in machine
    assert machine["versions"]["wfctl"]
    assert {t["target"].split(":")[0] for t in document["targets"]}, "no targets evaluated"
