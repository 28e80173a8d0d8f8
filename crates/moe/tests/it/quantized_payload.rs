//! FP8 layers over in-process ranks move quantized activations: every communication strategy
//! dispatches the E4M3 codes (one byte an element) and, for FP8 block, one f32 scale per 128
//! columns, instead of 16-bit values, and the layer's output equals the single-rank layer's.
//! A counting wrapper around the in-process group records what each collective sends.

use std::sync::{Arc, Mutex};

use crate::random::{Rng, quantized_weights, rank_layer};
use moe::{ForwardOptions, create_moe};
use moe_comm::InProcessGroup;
use moe_core::*;

const E: usize = 8;
// Three 128-column groups: the scales tensor ([rows, 3] f32) is not mistaken for the routing
// weights ([rows, 2] f32).
const H: usize = 384;
const I: usize = 128;

/// The dtype and shape of every tensor a rank's collectives sent.
#[derive(Default)]
struct Sent(Mutex<Vec<(DType, Vec<usize>)>>);

/// An in-process group that records the tensors its row collectives send.
struct Counting {
    inner: InProcessGroup,
    sent: Arc<Sent>,
}

impl Counting {
    fn record(&self, t: &Tensor) {
        self.sent.0.lock().unwrap().push((t.dtype(), t.shape().to_vec()));
    }
}

impl ProcessGroup for Counting {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn all_gather_v(&self, local: &Tensor, counts: &[usize], deadline: Deadline) -> Result<Tensor> {
        self.record(local);
        self.inner.all_gather_v(local, counts, deadline)
    }
    fn reduce_scatter_v(&self, full: &Tensor, counts: &[usize], deadline: Deadline) -> Result<Tensor> {
        self.record(full);
        self.inner.reduce_scatter_v(full, counts, deadline)
    }
    fn all_to_all_v(&self, send: &Tensor, sc: &[usize], rc: &[usize], deadline: Deadline) -> Result<Tensor> {
        self.record(send);
        self.inner.all_to_all_v(send, sc, rc, deadline)
    }
    fn all_reduce_sum(&self, t: &Tensor, deadline: Deadline) -> Result<Tensor> {
        self.inner.all_reduce_sum(t, deadline)
    }
    fn all_gather_usize(&self, value: usize, deadline: Deadline) -> Result<Vec<usize>> {
        self.inner.all_gather_usize(value, deadline)
    }
    fn barrier(&self, deadline: Deadline) -> Result<()> {
        self.inner.barrier(deadline)
    }
}

fn config(quant: &QuantConfig) -> MoeConfig {
    let mut c = MoeConfig::new(E, H, I, DType::BF16, RoutingMethod::Renormalize { top_k: 2 });
    c.quant = quant.clone();
    c
}

/// Uniform inputs in [-2, 2) and weights in [-0.2, 0.2) keep x and the activations under the
/// static scales' calibration amax of 4 (FP8 per-tensor).
fn checkpoint(quant: &QuantConfig) -> MemoryWeights {
    quantized_weights(&mut Rng::new(31), quant, (E, H, I), 0.2, [4.0, 4.0])
}

fn inputs(t: usize) -> (Tensor, Tensor) {
    let mut rng = Rng::new(5);
    (
        rng.tensor(DType::BF16, vec![t, H], 2.0),
        rng.tensor(DType::F32, vec![t, E], 3.0),
    )
}

/// Two attention-DP ranks with `list` tokens each over `comm`: every rank's output and the
/// tensors each rank's collectives sent.
fn two_ranks(quant: &QuantConfig, comm: &'static str, list: [usize; 2]) -> (Tensor, Vec<Arc<Sent>>) {
    let (x, l) = inputs(list.iter().sum());
    let (x, l, w) = (Arc::new(x), Arc::new(l), Arc::new(checkpoint(quant)));
    let sent: Vec<Arc<Sent>> = (0..2).map(|_| Arc::new(Sent::default())).collect();
    let handles: Vec<_> = InProcessGroup::world(2)
        .into_iter()
        .enumerate()
        .map(|(rank, g)| {
            let (x, l, w, quant) = (x.clone(), l.clone(), w.clone(), quant.clone());
            let group = Counting {
                inner: g,
                sent: sent[rank].clone(),
            };
            std::thread::spawn(move || -> Result<Tensor> {
                let mut c = config(&quant);
                c.parallel = ParallelConfig {
                    ep_size: 2,
                    ep_rank: rank,
                    tp_size: 1,
                    tp_rank: 0,
                    attention_dp: true,
                };
                let mut layer = rank_layer(c, Arc::new(group), comm, w.as_ref())?;
                let start = if rank == 0 { 0 } else { list[0] };
                let opts = ForwardOptions {
                    all_rank_num_tokens: Some(list.to_vec()),
                    use_dp_padding: false,
                };
                layer.forward_with(
                    &x.narrow_rows(start, list[rank])?,
                    &l.narrow_rows(start, list[rank])?,
                    &opts,
                )
            })
        })
        .collect();
    let outs: Vec<Tensor> = handles
        .into_iter()
        .map(|h| h.join().expect("rank thread").unwrap())
        .collect();
    (Tensor::concat_rows(&outs).unwrap(), sent)
}

#[test]
fn fp8_activations_cross_ranks_as_codes_and_group_scales_in_every_strategy() {
    let formats = [
        (
            QuantConfig {
                algo: QuantAlgo::Fp8Block,
                weight_block_size: Some([128, 128]),
                group_size: None,
            },
            H / 128,
        ),
        (
            QuantConfig {
                algo: QuantAlgo::Fp8PerTensor,
                ..QuantConfig::default()
            },
            0,
        ),
    ];
    let list = [24, 16];
    for (quant, groups) in formats {
        let (x, l) = inputs(list.iter().sum());
        let mut single = create_moe(config(&quant)).unwrap();
        single.load_weights(&checkpoint(&quant)).unwrap();
        let want = single.forward(&x, &l).unwrap().to_f32_vec("want").unwrap();
        for comm in ["allgather", "alltoall", "packed"] {
            let what = format!("{:?} over {comm}", quant.algo);
            let (got, sent) = two_ranks(&quant, comm, list);
            let got = got.to_f32_vec("got").unwrap();
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // bf16 outputs summed in another order on two ranks: a bf16 step or two.
            assert!(
                err <= scale / 128.0,
                "{what}: max abs error {err} (output scale {scale})"
            );

            for (rank, s) in sent.iter().enumerate() {
                let s = s.0.lock().unwrap();
                let row_bytes = |d: DType, w: usize| {
                    s.iter()
                        .filter(|(dt, shape)| *dt == d && shape.len() == 2 && shape[1] == w)
                        .map(|(_, shape)| shape[0] * w * d.size_in_bytes())
                        .sum::<usize>()
                };
                // The packed strategy sends one byte tensor per dispatch (every field's bytes
                // side by side): its rows hold the codes and the scales' bytes.
                let (codes, scales) = if comm == "packed" {
                    let per_row: usize = s
                        .iter()
                        .filter(|(dt, shape)| *dt == DType::U8 && shape.len() == 2)
                        .map(|(_, shape)| shape[1])
                        .max()
                        .unwrap_or(0);
                    assert!(
                        per_row >= H + 4 * groups,
                        "{what} rank {rank}: packed rows of {per_row} bytes"
                    );
                    assert!(
                        per_row < 2 * H,
                        "{what} rank {rank}: packed rows of {per_row} bytes hold 16-bit activations"
                    );
                    (list[rank] * H, list[rank] * 4 * groups)
                } else {
                    (row_bytes(DType::F8E4M3, H), row_bytes(DType::F32, groups))
                };
                assert!(codes > 0, "{what} rank {rank}: no E4M3 codes were sent: {s:?}");
                // Dispatch moves H code bytes (plus 4 bytes per 128 columns for FP8 block) per
                // token row: bf16 would move 2 H.
                let rows = codes / H;
                assert_eq!(codes, rows * H, "{what} rank {rank}");
                if groups > 0 {
                    assert_eq!(
                        scales,
                        rows * 4 * groups,
                        "{what} rank {rank}: one f32 scale per 128 columns"
                    );
                }
                println!(
                    "{what} rank {rank}: {rows} rows dispatched, {} bytes per row (bf16: {})",
                    (codes + scales) / rows.max(1),
                    2 * H
                );
            }
        }
    }
}
