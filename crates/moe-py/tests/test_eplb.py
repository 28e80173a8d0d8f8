"""EPLB placements from Python: plans from per-expert loads, their YAML, and errors."""

from __future__ import annotations

import numpy as np
import pytest

import moe_rs

E, SLOTS, GPUS = 8, 12, 4


def skewed_load(layers: int = 2) -> np.ndarray:
    rng = np.random.default_rng(0)
    load = rng.integers(1, 10, size=(layers, E)).astype(np.float64)
    load[:, 3] = 200.0  # one hot expert: the plan must replicate it
    return load


@pytest.mark.parametrize("algorithm", ["default", "deepseek", "greedy"])
def test_plan_replicates_the_hot_expert_and_balances(algorithm):
    load = skewed_load()
    plan = moe_rs.eplb_plan(load, SLOTS, GPUS, algorithm=algorithm)
    assert len(plan["phy2log"]) == 2
    for layer, slots in enumerate(plan["phy2log"]):
        assert len(slots) == SLOTS
        assert sorted(set(slots)) == list(range(E))  # every expert has a slot
        assert slots.count(3) >= 2
        assert plan["logcnt"][layer][3] == slots.count(3)
        assert plan["balancedness"][layer] >= plan["balancedness_before"][layer]


def test_previous_placement_bounds_the_changes():
    load = skewed_load(1)
    first = moe_rs.eplb_plan(load, SLOTS, GPUS)
    load2 = load.copy()
    load2[0, 5] = 150.0
    second = moe_rs.eplb_plan(load2, SLOTS, GPUS, max_changed_slots=2, previous=first["phy2log"])
    changed = sum(a != b for a, b in zip(first["phy2log"][0], second["phy2log"][0]))
    assert changed <= 2 and second["changed_slots"] == [changed]


def test_placement_yaml_names_every_layer():
    plan = moe_rs.eplb_plan(skewed_load(), SLOTS, GPUS)
    text = moe_rs.eplb_placement_yaml(plan, [3, 5])
    assert f"num_slots: {SLOTS}" in text
    for layer, slots in zip([3, 5], plan["phy2log"]):
        assert f"  {layer}: [{', '.join(map(str, slots))}]" in text
    with pytest.raises(moe_rs.ConfigError, match="layer indices"):
        moe_rs.eplb_placement_yaml(plan, [3])


def test_plan_errors_are_config_errors():
    with pytest.raises(moe_rs.ConfigError, match="algorithm"):
        moe_rs.eplb_plan(skewed_load(), SLOTS, GPUS, algorithm="magic")
    with pytest.raises(moe_rs.MoeError):
        moe_rs.eplb_plan(skewed_load(), SLOTS - 1, GPUS)  # 11 slots over 4 GPUs
    with pytest.raises(moe_rs.MoeError):
        moe_rs.eplb_plan(skewed_load(), E - 2, 2)  # fewer slots than experts
