//! Tests of the device row kernels (`super`): gathers, packs, segment sums and the all-to-all
//! route against host computations of the same layouts.

use moe_core::{Result, Tensor};

use moe_core::DType;

use super::{alltoall_route, sum_blocks, sum_blocks_with};
use crate::cuda::{AllToAllRoute, CudaDevice, OwnBlock, download};

/// The routing as the host strategy lists it: send order (rank-major, tokens ascending),
/// counts per rank, each token's rows (CSR), and the first bad (token, slot).
#[allow(clippy::type_complexity)]
fn host_route(
    slots: &[i32],
    k: usize,
    owner: &[i32],
    world: usize,
) -> (Vec<i32>, Vec<usize>, Vec<i32>, Vec<i32>, Option<(usize, i32)>) {
    let n = slots.len() / k;
    let mut per_rank = vec![Vec::new(); world];
    let mut bad = None;
    for t in 0..n {
        let mut seen = vec![false; world];
        for &s in &slots[t * k..(t + 1) * k] {
            match owner.get(s as usize).filter(|_| s >= 0) {
                Some(&o) => seen[o as usize] = true,
                None => bad = bad.or(Some((t, s))),
            }
        }
        (0..world).filter(|&r| seen[r]).for_each(|r| per_rank[r].push(t as i32));
    }
    let counts = per_rank.iter().map(Vec::len).collect();
    let order: Vec<i32> = per_rank.concat();
    let mut offsets = vec![0i32; n + 1];
    order.iter().for_each(|&t| offsets[t as usize + 1] += 1);
    (0..n).for_each(|t| offsets[t + 1] += offsets[t]);
    let mut next = offsets.clone();
    let mut rows = vec![0i32; order.len()];
    for (row, &t) in order.iter().enumerate() {
        rows[next[t as usize] as usize] = row as i32;
        next[t as usize] += 1;
    }
    (order, counts, offsets, rows, bad)
}

#[test]
fn device_alltoall_routing_equals_the_host_lists() -> Result<()> {
    let dev = CudaDevice::new(0)?;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |below: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % below as u64) as usize
    };
    for &(n, k, world, num_slots) in &[
        (0, 2, 2, 8),
        (1, 1, 1, 4),
        (7, 2, 3, 9),
        (1000, 8, 2, 256),
        (3000, 8, 4, 256),
        (4096, 8, 8, 264),
        (2500, 4, 5, 17),
        (1030, 6, 64, 130),
    ] {
        let owner: Vec<i32> = (0..num_slots).map(|s| (s * world / num_slots) as i32).collect();
        let slots: Vec<i32> = (0..n * k).map(|_| next(num_slots) as i32).collect();
        let owner_d = dev.upload(&Tensor::from_i32(vec![num_slots], owner.clone())?)?;
        let slots_h = Tensor::from_i32(vec![n, k], slots.clone())?;
        let route = alltoall_route(&slots_h, &owner_d, world)?;
        let (order, counts, offsets, rows, _) = host_route(&slots, k, &owner, world);
        let index = download(&route.index)?.as_i32("index")?.to_vec();
        let head = download(&route.head)?.as_i32("head")?.to_vec();
        let case = format!("n {n} k {k} world {world}");
        let m = order.len();
        assert_eq!(&index[..m], &order[..], "{case}: order");
        assert_eq!(
            &index[route.offsets_at()..route.offsets_at() + n + 1],
            &offsets[..],
            "{case}: offsets"
        );
        assert_eq!(&index[route.rows_at()..route.rows_at() + m], &rows[..], "{case}: rows");
        let sent: Vec<usize> = head[..world].iter().map(|&c| c as usize).collect();
        assert_eq!(sent, counts, "{case}: counts");
        assert_eq!(&head[world..], &[0, 0], "{case}: no bad slot");
    }
    Ok(())
}

#[test]
fn device_alltoall_routing_names_the_first_bad_slot() -> Result<()> {
    let dev = CudaDevice::new(0)?;
    let owner_d = dev.upload(&Tensor::from_i32(vec![4], vec![0, 0, 1, 1])?)?;
    let mut slots: Vec<i32> = (0..3000 * 2).map(|i| i % 4).collect();
    slots[2 * 2100 + 1] = 9;
    slots[2 * 2500] = -3;
    let route = alltoall_route(&Tensor::from_i32(vec![3000, 2], slots)?, &owner_d, 2)?;
    let head = download(&route.head)?.as_i32("head")?.to_vec();
    assert_eq!(&head[2..], &[2101, 9]);
    // As the other rank of two reads the all-gathered heads.
    let heads: Vec<i32> = [0, 0, 0, 0].into_iter().chain(head).collect();
    let err = AllToAllRoute::counts(&heads, 0, 2, 4).unwrap_err().to_string();
    assert!(
        err.contains("rank 1: token 2100 names slot 9, but there are 4 slots"),
        "{err}"
    );
    Ok(())
}

#[test]
fn block_sums_match_the_host_order_bit_for_bit() -> Result<()> {
    let dev = CudaDevice::new(0)?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        ((seed >> 11) as f64 / (1u64 << 53) as f64) as f32 * 8.0 - 4.0
    };
    // (blocks, len, own block): 16-byte loads where len and every base allow them, the
    // scalar kernel otherwise (odd len, odd offset).
    type Case = (usize, usize, Option<OwnAt>);
    // The own block's position among the blocks, and its first element in the own tensor.
    type OwnAt = (usize, usize);
    let cases: &[Case] = &[
        (1, 64, None),
        (3, 4096, None),
        (2, 7168, Some((0, 0))),
        (2, 7168, Some((1, 7168))),
        (4, 1000, Some((2, 16))),
        (4, 1001, Some((3, 5))),
        (3, 24, Some((1, 3))),
        (1, 40, Some((0, 8))),
    ];
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for &(blocks, len, own) in cases {
            let vals: Vec<Vec<f32>> = (0..blocks).map(|_| (0..len).map(|_| next()).collect()).collect();
            // Each block as its dtype rounds it, then the host's f32 sum in block order.
            let round = |v: &[f32]| Tensor::from_f32_as(dtype, vec![v.len()], v)?.to_f32_vec("block");
            let rounded = vals.iter().map(|v| round(v)).collect::<Result<Vec<_>>>()?;
            let sum: Vec<f32> = (0..len)
                .map(|e| rounded[1..].iter().fold(rounded[0][e], |acc, b| acc + b[e]))
                .collect();
            let want = round(&sum)?;
            let case = format!("{dtype} blocks {blocks} len {len} own {own:?}");
            let got = match own {
                None => {
                    let all: Vec<f32> = vals.concat();
                    let t = dev.upload(&Tensor::from_f32_as(dtype, vec![blocks * len], &all)?)?;
                    sum_blocks(&t, blocks, vec![len])?
                }
                Some((index, first)) => {
                    let peers: Vec<f32> = (0..blocks)
                        .filter(|&b| b != index)
                        .flat_map(|b| vals[b].clone())
                        .collect();
                    let mut own_vals = vec![7.0f32; first];
                    own_vals.extend(&vals[index]);
                    own_vals.extend([9.0f32; 3]);
                    let peers = dev.upload(&Tensor::from_f32_as(dtype, vec![peers.len()], &peers)?)?;
                    let own_t = dev.upload(&Tensor::from_f32_as(dtype, vec![own_vals.len()], &own_vals)?)?;
                    let own = OwnBlock {
                        index,
                        tensor: &own_t,
                        first,
                    };
                    sum_blocks_with(&peers, Some(own), blocks, vec![len])?
                }
            };
            assert_eq!(got.dtype(), dtype, "{case}");
            assert_eq!(download(&got)?.to_f32_vec("sum")?, want, "{case}");
        }
    }
    // A block count or an own block that does not fit is a typed error.
    let t = dev.upload(&Tensor::from_f32_as(DType::F32, vec![10], &[1.0; 10])?)?;
    assert!(sum_blocks(&t, 3, vec![4]).is_err());
    let own = OwnBlock {
        index: 1,
        tensor: &t,
        first: 8,
    };
    assert!(
        sum_blocks_with(&t, Some(own), 3, vec![5]).is_err(),
        "own block past the tensor's end"
    );
    Ok(())
}
