//! The dynamic balancer through the scheduler's hook sequence: statistics over two chunks
//! per iteration, a plan at the configured cadence, routing that stays on the old placement
//! until the assembler reports the migration applied. Plans and reports are snapshotted.

use std::sync::Arc;

use moe_core::eplb::MigrationPlan;
use moe_core::{DType, EplbConfig, LoadBalancer, MoeConfig, RoutingMethod, Tensor};
use moe_eplb::{Algorithm, DynamicBalancer, DynamicBalancerConfig, RebalanceReport};
use serde::Serialize;

use crate::statistics::FakeGroup;

const E: usize = 8;
const SLOTS: usize = 12;
const RANKS: usize = 4;

/// Token routes of one chunk: experts `hot` take every token's first choice, the second
/// choices spread over all experts.
fn chunk_ids(chunk: usize, hot: [i32; 2]) -> Tensor {
    let mut ids: Vec<i32> = Vec::new();
    for t in 0..16 {
        ids.push(hot[t % 2]);
        ids.push(((t + chunk) % E) as i32);
    }
    Tensor::from_i32(vec![16, 2], ids).unwrap()
}

const HOT: [i32; 2] = [0, 5];

/// Every routed slot serves the routed expert under `table`.
fn assert_routes_through(ids: &Tensor, slots: &Tensor, table: &[usize]) {
    for (&e, &s) in ids.as_i32("ids").unwrap().iter().zip(slots.as_i32("slots").unwrap()) {
        assert_eq!(table[s as usize], e as usize, "slot {s} does not serve expert {e}");
    }
}

/// One iteration in two chunks, as `chunk_body` calls the hooks.
fn iteration(b: &mut DynamicBalancer, table: &[usize], hot: [i32; 2]) {
    b.start_wait_gpu_stage().unwrap();
    b.done_wait_gpu_stage().unwrap();
    let first = chunk_ids(0, hot);
    b.update_statistic(&first, true, false, false).unwrap();
    assert_routes_through(&first, &b.route(&first, true).unwrap(), table);
    let last = chunk_ids(1, hot);
    b.update_statistic(&last, false, true, false).unwrap();
    assert_routes_through(&last, &b.route(&last, true).unwrap(), table);
    b.start_set_cpu_stage().unwrap();
    b.done_set_cpu_stage().unwrap();
}

/// What the assembler saw after one iteration, written compactly for review.
#[derive(Serialize)]
struct Event {
    after_iteration: usize,
    hot: [i32; 2],
    /// Moves of the plan taken now, `slot: from -> to`.
    taken: Vec<String>,
    /// Whether the plan taken one iteration earlier was applied now.
    applied: bool,
    /// The table routing uses, one bracket per rank.
    routing_table: String,
}

#[derive(Serialize)]
struct Trace {
    events: Vec<Event>,
    reports: Vec<RebalanceReport>,
}

fn by_rank(table: &[usize]) -> String {
    let per = table.len() / RANKS;
    table
        .chunks(per)
        .map(|c| format!("[{}]", c.iter().map(usize::to_string).collect::<Vec<_>>().join(" ")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Rounded so the snapshot does not hinge on the last bits of a float.
fn rounded(mut r: RebalanceReport) -> RebalanceReport {
    r.balancedness_before = (r.balancedness_before * 1e6).round() / 1e6;
    r.balancedness_after = (r.balancedness_after * 1e6).round() / 1e6;
    r
}

#[test]
fn migration_follows_the_cadence_and_routing_waits_for_it() {
    let mut cfg = DynamicBalancerConfig::new(3, E, SLOTS, RANKS, 1, 2);
    cfg.algorithm = Algorithm::Default {
        max_changed_slots: Some(4),
    };
    let initial = moe_eplb::default_assignment(E, SLOTS, RANKS);
    // Ranks 1..3 route the same tokens, so the other three ranks add three times ours.
    // The other ranks' counts are a fixed background: two tokens per expert per iteration.
    let group = FakeGroup::new(RANKS, vec![2.0; E]);
    let mut b = DynamicBalancer::new(cfg, initial.clone(), Some(group)).unwrap();

    let mut table = initial;
    let mut in_flight: Option<MigrationPlan> = None;
    let mut events = Vec::new();
    for it in 1..=8 {
        // The hot set moves after the fourth iteration.
        let hot = if it <= 4 { HOT } else { [2, 7] };
        iteration(&mut b, &table, hot);
        // The assembler polls between forwards and applies a taken plan one forward later,
        // as a slow copy would: the forward in between must still route the old table.
        let mut applied = false;
        if let Some(plan) = in_flight.take() {
            b.migration_applied(&plan).unwrap();
            table = plan.new_slot_to_expert.clone();
            applied = true;
        }
        let taken = b.take_migration();
        if let Some(plan) = &taken {
            assert_eq!(it % 2, 0, "plans come only at the end of every second iteration");
            assert!(plan.moves.len() <= 4, "the cap on changed slots holds");
            for m in &plan.moves {
                assert_eq!(table[m.slot], m.from_expert);
                assert_eq!(plan.new_slot_to_expert[m.slot], m.to_expert);
            }
            assert_eq!(
                b.placement().slot_to_expert(),
                &table[..],
                "not routed through before it is applied"
            );
            in_flight = Some(plan.clone());
        }
        assert_eq!(b.placement().slot_to_expert(), &table[..]);
        let taken = taken.map_or_else(Vec::new, |p| {
            p.moves
                .iter()
                .map(|m| format!("{}: {} -> {}", m.slot, m.from_expert, m.to_expert))
                .collect()
        });
        events.push(Event {
            after_iteration: it,
            hot,
            taken,
            applied,
            routing_table: by_rank(&table),
        });
    }
    assert_eq!(b.iteration(), 8);
    let reports = b.reports().to_vec();
    assert!(!reports.is_empty());
    for r in &reports {
        assert!(r.balancedness_after >= r.balancedness_before, "{r:?}");
    }
    assert!(
        reports.iter().filter(|r| r.changed_slots > 0).count() >= 2,
        "the moved hot set is rebalanced too"
    );
    let reports = reports.into_iter().map(rounded).collect();
    insta::assert_json_snapshot!("dynamic_hook_sequence", Trace { events, reports });
}

#[test]
fn a_plan_is_not_remade_while_one_is_outstanding() {
    let cfg = DynamicBalancerConfig::new(0, E, SLOTS, RANKS, 0, 1);
    let initial = moe_eplb::default_assignment(E, SLOTS, RANKS);
    let mut b = DynamicBalancer::new(cfg, initial.clone(), None).unwrap();
    iteration(&mut b, &initial, HOT);
    let plan = b.take_migration().expect("a plan after the first iteration");
    iteration(&mut b, &initial, HOT);
    iteration(&mut b, &initial, HOT);
    assert!(b.take_migration().is_none(), "one migration in flight at a time");
    assert_eq!(b.reports().len(), 1);
    // Applying mid-forward is refused; between forwards it switches routing.
    b.start_wait_gpu_stage().unwrap();
    assert!(b.migration_applied(&plan).is_err());
    b.done_wait_gpu_stage().unwrap();
    b.start_set_cpu_stage().unwrap();
    b.done_set_cpu_stage().unwrap();
    b.migration_applied(&plan).unwrap();
    assert_eq!(b.placement().slot_to_expert(), &plan.new_slot_to_expert[..]);
}

#[test]
fn warm_up_and_gathered_statistics() {
    let mut cfg = DynamicBalancerConfig::new(0, E, SLOTS, RANKS, 0, 1);
    cfg.warm_up_iters = 2;
    let initial = moe_eplb::default_assignment(E, SLOTS, RANKS);
    let group: Arc<FakeGroup> = FakeGroup::new(RANKS, vec![0.0; E]);
    let mut b = DynamicBalancer::new(cfg, initial, Some(group)).unwrap();
    let ids = chunk_ids(0, HOT);
    for it in 1..=3 {
        b.start_wait_gpu_stage().unwrap();
        b.done_wait_gpu_stage().unwrap();
        // The strategy gathers the counts itself (ignore_allreduce) ...
        b.update_statistic(&ids, true, true, true).unwrap();
        b.route(&ids, false).unwrap();
        b.start_set_cpu_stage().unwrap();
        if it == 1 {
            // ... and must hand them back before the iteration ends.
            let e = b.done_set_cpu_stage().unwrap_err().to_string();
            assert!(e.contains("no gathered statistics"), "{e}");
            return_to_idle(&mut b);
            continue;
        }
        let mut gathered = vec![0f32; RANKS * E];
        for &e in ids.as_i32("ids").unwrap() {
            for r in 0..RANKS {
                gathered[r * E + e as usize] += 1.0;
            }
        }
        b.update_gathered_statistic(&Tensor::from_f32(vec![RANKS, E], gathered).unwrap())
            .unwrap();
        b.done_set_cpu_stage().unwrap();
        // Iterations <= 2 are warm-up: no plan before the end of iteration 3.
        assert_eq!(b.take_migration().is_some(), it == 3, "iteration {it}");
    }
}

/// Finishes an iteration whose `done_set_cpu_stage` was refused for missing gathered counts.
fn return_to_idle(b: &mut DynamicBalancer) {
    let counts = Tensor::from_f32(vec![RANKS, E], vec![0.0; RANKS * E]).unwrap();
    b.update_gathered_statistic(&counts).unwrap();
    b.done_set_cpu_stage().unwrap();
    assert!(
        b.update_gathered_statistic(&counts).is_err(),
        "nothing is waiting any more"
    );
}

#[test]
fn built_from_a_layer_config() {
    let mut c = MoeConfig::new(E, 8, 8, DType::F32, RoutingMethod::Renormalize { top_k: 2 });
    c.parallel.ep_size = RANKS;
    c.parallel.ep_rank = 2;
    c.layer_idx = Some(7);
    c.eplb = Some(EplbConfig {
        num_slots: SLOTS,
        layer_updates_per_iter: 3,
        initial_global_assignments: None,
    });
    let b = DynamicBalancer::from_moe_config(&c, Algorithm::Greedy, None).unwrap();
    assert_eq!(b.config().layer_idx, 7);
    assert_eq!(b.config().layer_updates_per_iter, 3);
    assert_eq!(
        b.placement().slot_to_expert(),
        &moe_eplb::default_assignment(E, SLOTS, RANKS)[..]
    );
    assert!(b.is_dynamic());
    c.eplb = None;
    assert!(DynamicBalancer::from_moe_config(&c, Algorithm::Greedy, None).is_err());
}
