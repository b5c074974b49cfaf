"""pycomm.hier.ZeroPlan: policies, memory per rank, bytes per level (ZeRO++'s 3M -> 0.75M), the cost
model's reproduction of the Frontier paper's ratios, and ``pycomm topo``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pycomm.cli import main
from pycomm.errors import InvalidArgumentError
from pycomm.hier import Topology, ZeroPlan
from pycomm.hier.plan import Placement

N = 20e9
FRONTIER_CASE = {"tokens_per_step": 384 * 2048 * 16, "micro_steps": 16}


def frontier_predictions() -> dict:
    topo = Topology.frontier(48)
    return {
        scheme: ZeroPlan(topo, N, scheme).predict(
            FRONTIER_CASE["tokens_per_step"], micro_steps=FRONTIER_CASE["micro_steps"]
        )
        for scheme in ["zero3", "zeropp", "frontier3", "mics", "hsdp"]
    }


def test_presets_place_each_kind_of_state() -> None:
    topo = Topology.frontier(4)
    zeropp = ZeroPlan(topo, N, "zeropp")
    assert zeropp.policy == {
        "forward_gather": Placement(2, "int8"),
        "backward_gather": Placement(1, None),
        "gradient_reduce": Placement(2, "int4"),
        "optimizer_shard": Placement(2, None),
    }
    frontier3 = ZeroPlan(topo, N, "frontier3")
    assert [frontier3.policy[k].level for k in ("forward_gather", "backward_gather", "gradient_reduce")] == [
        0,
        0,
        0,
    ]
    assert frontier3.policy["optimizer_shard"].level == 2
    assert frontier3.step_quantizers == {"gradient_sync": "int4", "parameter_update": "int8"}
    with pytest.raises(InvalidArgumentError, match="at least three levels"):
        ZeroPlan(Topology.dgx(2), N, "frontier3")
    with pytest.raises(InvalidArgumentError, match="unknown scheme"):
        ZeroPlan(topo, N, "zero4")


def test_custom_policy_by_name_and_pair() -> None:
    topo = Topology.frontier(2)
    plan = ZeroPlan(
        topo,
        1e9,
        {
            "forward_gather": ("node", "int8"),
            "backward_gather": "gpu",
            "gradient_reduce": {"level": -1, "quantizer": "int4"},
            "optimizer_shard": 2,
        },
    )
    assert plan.scheme == "custom"
    assert plan.policy == ZeroPlan(topo, 1e9, "zeropp").policy
    with pytest.raises(InvalidArgumentError, match="lacks"):
        ZeroPlan(topo, 1e9, {"forward_gather": 0})
    with pytest.raises(InvalidArgumentError, match="quantizer must be one of"):
        ZeroPlan(
            topo,
            1e9,
            {"forward_gather": (0, "int3"), "backward_gather": 0, "gradient_reduce": 0, "optimizer_shard": 0},
        )
    with pytest.raises(InvalidArgumentError, match="takes no quantizer"):
        ZeroPlan(
            topo,
            1e9,
            {"forward_gather": 0, "backward_gather": 0, "gradient_reduce": 0, "optimizer_shard": (0, "int8")},
        )


def test_memory_per_rank_per_scheme() -> None:
    topo = Topology.frontier(48)  # 384 ranks, 8 a node, 2 a package
    per_rank = {
        scheme: ZeroPlan(topo, N, scheme).memory_per_rank()
        for scheme in ["zero3", "zeropp", "mics", "hsdp", "frontier3"]
    }
    assert per_rank["zero3"] == {
        "parameters": 2 * N / 384,
        "secondary": 0.0,
        "gradients": 2 * N / 384,
        "optimizer": 12 * N / 384,
        "total": 16 * N / 384,
    }
    assert per_rank["zeropp"]["secondary"] == 2 * N / 8
    assert per_rank["zeropp"]["total"] == pytest.approx(16 * N / 384 + 2 * N / 8)
    assert per_rank["mics"] == per_rank["hsdp"]
    assert per_rank["mics"]["total"] == pytest.approx(16 * N / 8)
    assert per_rank["frontier3"] == {
        "parameters": N,
        "secondary": 0.0,
        "gradients": N,
        "optimizer": 12 * N / 384,
        "total": 2 * N + 12 * N / 384,
    }


def test_bytes_per_level_formula_on_2x2x2() -> None:
    topo = Topology.from_levels([("gcd", 2), ("gpu", 2), ("node", 2)])
    rows = ZeroPlan(topo, 1000, "zero3").bytes_per_level()
    m = 2 * 1000  # model bytes in 16-bit
    # n * w * (f_i - 1) / (f_0 ... f_i) per gather or reduce-scatter: M/2, M/4, M/8 at the three levels.
    assert [row["forward_gather"] for row in rows] == [m / 2, m / 4, m / 8]
    assert [row["total"] for row in rows] == [3 * m / 2, 3 * m / 4, 3 * m / 8]
    hsdp = ZeroPlan(topo, 1000, "hsdp").bytes_per_level()
    assert hsdp[2]["gradient_reduce"] == 2 * m / 8  # all-reduce of the node shard across nodes
    mics = ZeroPlan(topo, 1000, "mics").bytes_per_level(micro_steps=4)
    assert mics[2]["gradient_reduce"] == 0 and mics[2]["gradient_sync"] == 2 * m / 8
    assert mics[0]["forward_gather"] == 4 * m / 2


@pytest.mark.parametrize("nodes", [2, 3, 48])
def test_cross_node_volume_zero3_3m_and_zeropp_075m(nodes: int) -> None:
    topo = Topology.dgx(nodes)
    zero3, zeropp = ZeroPlan(topo, N, "zero3"), ZeroPlan(topo, N, "zeropp")
    m = zero3.model_bytes
    fraction = (nodes - 1) / nodes  # a bandwidth-optimal collective moves (n-1)/n of the model
    assert zero3.bytes_leaving("node") == pytest.approx(3 * m * fraction)
    # int8 weights and int4 gradients, each with one float32 scale per 256 elements.
    scales = 4 / 256 / 2
    expected = m * fraction * (0.5 + scales + 0.25 + scales)
    assert zeropp.bytes_leaving("node") == pytest.approx(expected)
    assert zeropp.bytes_leaving("node") == pytest.approx(0.75 * m * fraction, rel=0.03)
    assert zeropp.bytes_per_level()[1]["backward_gather"] == 0  # hpZ: the backward gather stays in the node


def test_frontier_case_reproduces_the_published_ratios() -> None:
    predictions = frontier_predictions()
    zeropp_over_zero3 = predictions["zeropp"].speedup_over(predictions["zero3"])
    frontier3_over_zeropp = predictions["frontier3"].speedup_over(predictions["zeropp"])
    assert zeropp_over_zero3 == pytest.approx(1.4, rel=0.10)
    assert frontier3_over_zeropp == pytest.approx(1.71, rel=0.10)
    assumptions = predictions["zero3"].assumptions
    for key in ["achieved_flops_per_gcd", "overlap", "bandwidth_efficiency", "quantize_throughput", "links"]:
        assert key in assumptions
    # The 3-level plan never sends weights or gradients across nodes inside a micro-step.
    node = predictions["frontier3"].levels[2]["bytes"]
    assert node["forward_gather"] == node["backward_gather"] == node["gradient_reduce"] == 0


def test_prediction_parts_add_up() -> None:
    p = frontier_predictions()["zeropp"]
    assert p.step_time == pytest.approx(p.compute_time + p.exposed_time)
    assert 0 < p.exposed_time <= p.communication_time
    assert p.tflops_per_gcd == pytest.approx(
        6 * N * FRONTIER_CASE["tokens_per_step"] / 384 / p.step_time / 1e12
    )
    # With full overlap and no communication left over, compute alone sets the pace.
    topo = Topology.from_levels([("gpu", 1)])
    alone = ZeroPlan(topo, 1e9, "zero3").predict(1e6, achieved_flops_per_gcd=1e12)
    assert alone.step_time == pytest.approx(6e15 / 1e12)
    with pytest.raises(InvalidArgumentError, match="overlap"):
        ZeroPlan(topo, 1e9).predict(1e6, overlap=2)


def test_topo_cli_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "topo.json"
    assert main(["topo", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for needle in [
        "Topology(gcd=2, gpu=4, node=48",
        "memory per rank",
        "frontier3",
        "predicted speedup",
        "assumptions",
        "overlap",
    ]:
        assert needle in text
    report = json.loads(out.read_text())
    assert set(report["schemes"]) == {"zero3", "zeropp", "mics", "hsdp", "frontier3"}
    assert report["speedups"]["zeropp"]["zero3"] == pytest.approx(1.4, rel=0.10)
    assert report["speedups"]["frontier3"]["zeropp"] == pytest.approx(1.71, rel=0.10)
    assert report["topology"]["size"] == 384


def test_topo_cli_levels_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["topo", "--levels", "gcd:2,gpu:2,node:2", "--params", "1e9", "--scheme", "zero3,zeropp"]) == 0
    )
    assert "Topology(gcd=2, gpu=2, node=2; size=8)" in capsys.readouterr().out
    assert main(["topo", "--preset", "dgx", "--json", "-"]) == 0
    assert "frontier3" not in json.loads(capsys.readouterr().out)["schemes"]  # needs three levels
    assert main(["topo", "--levels", "gcd=2"]) == 2
    assert "name:fanout" in capsys.readouterr().err
    assert main(["topo", "--scheme", "zero9"]) == 2
