//! Work decomposition of the grouped CPU backend: the permuted rows of each local slot are
//! cut into row blocks; one (slot, row block) is one task.
//!
//! Blocks aim at a few tasks per worker (load balance across uneven expert loads) but stay
//! large enough for the GEMM to reach its efficient shape. When there are fewer tasks than
//! workers (decode: a handful of tokens), each task's GEMMs get the spare workers instead.

use moe_kernels::cpu::permute::SlotPermutation;

/// Fewest rows a block is cut to (below this the GEMM's packing costs dominate).
const MIN_BLOCK_ROWS: usize = 16;
/// Most rows of one block (the per-task FC1 tile is `rows x expand * I_pp` f32).
const MAX_BLOCK_ROWS: usize = 256;
/// Tasks aimed for per worker.
const TASKS_PER_WORKER: usize = 4;

/// Rows `start..start + len` of the permuted layout, all of local slot `slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WorkItem {
    pub slot: usize,
    pub start: usize,
    pub len: usize,
}

/// Cuts the rows of `perm` into work items (in row order, covering every row once), and
/// returns the worker count each item's GEMMs may use.
pub(crate) fn plan(perm: &SlotPermutation, threads: usize, items: &mut Vec<WorkItem>) -> usize {
    items.clear();
    let threads = threads.max(1);
    let target = threads * TASKS_PER_WORKER;
    let block = perm.num_rows().div_ceil(target).clamp(MIN_BLOCK_ROWS, MAX_BLOCK_ROWS);
    for slot in 0..perm.num_local_slots() {
        let rows = perm.slot_rows(slot);
        let len = rows.len();
        if len == 0 {
            continue;
        }
        // Near-equal blocks rather than full blocks plus a small remainder.
        let blocks = len.div_ceil(block);
        let (base, extra) = (len / blocks, len % blocks);
        let mut start = rows.start;
        for b in 0..blocks {
            let len = base + usize::from(b < extra);
            items.push(WorkItem { slot, start, len });
            start += len;
        }
    }
    (threads / items.len().max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_rows_in_order_and_share_spare_workers() {
        // 3 local slots: 40 rows of slot 0, none of slot 1, 3 of slot 2.
        let mut ids = vec![0; 40];
        ids.extend([2, 2, 2]);
        let mut perm = SlotPermutation::new();
        perm.compute(&ids, 1, 3, 0..3).unwrap();
        let mut items = Vec::new();
        // 43 rows over 1 worker x 4 tasks -> blocks of 16: slot 0 splits into 14 + 13 + 13.
        let inner = plan(&perm, 1, &mut items);
        assert_eq!(inner, 1);
        let want = vec![
            WorkItem {
                slot: 0,
                start: 0,
                len: 14,
            },
            WorkItem {
                slot: 0,
                start: 14,
                len: 13,
            },
            WorkItem {
                slot: 0,
                start: 27,
                len: 13,
            },
            WorkItem {
                slot: 2,
                start: 40,
                len: 3,
            },
        ];
        assert_eq!(items, want);
        // Decode: one row, 8 workers -> one item whose GEMMs get all 8.
        perm.compute(&[1], 1, 3, 0..3).unwrap();
        assert_eq!(plan(&perm, 8, &mut items), 8);
        assert_eq!(
            items,
            vec![WorkItem {
                slot: 1,
                start: 0,
                len: 1
            }]
        );
        perm.compute(&[], 1, 3, 0..3).unwrap();
        assert_eq!(plan(&perm, 8, &mut items), 8);
        assert!(items.is_empty());
    }
}
