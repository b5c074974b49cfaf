"""``pycomm bench hier --quick --json``: every documented field is present, and the bytes HierComm sent
per level equal the plan's formulas (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pycomm.cli import main


@pytest.mark.mpi
@pytest.mark.slow
def test_quick_run_reports_times_and_the_planned_bytes(tmp_path: Path) -> None:
    out = tmp_path / "hier.json"
    assert main(["bench", "hier", "--quick", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["benchmark"] == "hier"
    assert document["ranks"] == 8 and document["topology"] == "gcd:2,gpu:2,node:2"
    assert isinstance(document["oversubscribed"], bool) and document["note"]
    for key in ["machine", "settings", "definitions", "seconds"]:
        assert key in document
    collectives = document["collectives"]
    # Every collective kind at every quick size, one of which leaves padding.
    kinds = {(row["operation"], row["quantizer"]) for row in collectives}
    assert kinds == {
        ("all_gather", None),
        ("all_gather", "int8"),
        ("reduce_scatter", None),
        ("reduce_scatter", "int4"),
    }
    assert len(collectives) == 4 * len(document["settings"]["sizes"])
    for row in collectives:
        for system in ("hier", "flat"):
            assert row[system]["median_s"] > 0
            assert len(row[system]["seconds_per_call"]) == document["settings"]["repeat"]
        assert row["ratio_hier_over_flat"] == row["hier"]["median_s"] / row["flat"]["median_s"]
        levels = row["bytes_per_level"]
        assert list(levels) == ["gcd", "gpu", "node"]
        for counts in levels.values():
            assert counts["measured"] == counts["predicted"] > 0
        assert row["bytes_match"] is True
        assert row["hier_bytes_total"] == sum(counts["measured"] for counts in levels.values())
    assert {(row["kernel"], row["scheme"]) for row in document["kernels"]} == {
        ("quantize", "int8"),
        ("quantize", "int4"),
        ("dequantize", "int8"),
        ("dequantize", "int4"),
    }
    assert all(row["gbps"] > 0 for row in document["kernels"])
