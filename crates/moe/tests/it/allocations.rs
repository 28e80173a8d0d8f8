//! A steady-state host forward allocates nothing beyond its workspaces: no copy of `x` or of
//! the router logits anywhere between `ConfigurableMoe::forward` and the backend's kernels.
//!
//! This module installs the binary's `#[global_allocator]`: [`System`] behind a counter that
//! counts only while a measurement is armed and only on the threads of the measuring rayon
//! pool (a thread-local tag set by the pool's start handler). The layer runs inside that pool
//! (`ThreadPool::install`), so its own thread and every worker its GEMMs fan out to are
//! counted, and nothing else is: the other tests of this binary, which `cargo test` runs on
//! threads of the same process (nextest gives each its own), allocate on untagged threads and
//! never reach the counters, so they run exactly as without it. The measurements themselves
//! are serialized by one lock, since the counters are global.
//!
//! Each case warms the layer up (the CPU backend grows its workspace and scratch pool to the
//! shape, the rayon pool starts its workers), then counts one forward. What a forward may
//! allocate, and why each is inherent, is spelled out where the bound is asserted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use moe::{ConfigurableMoe, create_moe};
use moe_core::{DType, MoeConfig, QuantAlgo, QuantConfig, RoutingMethod, Tensor, WeightSource};

use crate::random::{Rng, expert_weights, quantized_weights};

/// The counting allocator of this test binary (see the module docs).
struct CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Counting happens only between `arm` and `disarm`, on tagged threads.
static ARMED: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);
/// The sizes of the first allocations of a measurement, for the failure message.
const KEPT: usize = 256;
static SIZES: [AtomicUsize; KEPT] = [const { AtomicUsize::new(0) }; KEPT];

thread_local! {
    /// Set on the measuring pool's threads; `const` so reading it never allocates.
    static TAGGED: Cell<bool> = const { Cell::new(false) };
}

fn record(size: usize) {
    if ARMED.load(Ordering::Relaxed) && TAGGED.try_with(Cell::get).unwrap_or(false) {
        let i = COUNT.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size, Ordering::Relaxed);
        if let Some(slot) = SIZES.get(i) {
            slot.store(size, Ordering::Relaxed);
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds as it does for `System`; `record` only touches atomics and a
// const-initialised thread-local, and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's `layout` satisfies `alloc`'s contract; forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A growth may move the block: counted as an allocation of the new size.
        record(new_size);
        // SAFETY: `ptr` was allocated by this allocator (so by `System`) with `layout`, and
        // `new_size` satisfies `realloc`'s contract: all the caller's guarantees, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations of one measured forward.
#[derive(Debug)]
struct Allocs {
    count: usize,
    bytes: usize,
    /// Sizes of the first allocations, in order.
    sizes: Vec<usize>,
}

/// Serializes measurements: the counters are global.
static MEASURING: Mutex<()> = Mutex::new(());

const WARMUP: usize = 4;
const THREADS: usize = 2;

/// Warms `layer` up, then counts the allocations of one more forward on `x` and `logits`.
fn measure(layer: &mut ConfigurableMoe, x: &Tensor, logits: &Tensor) -> Allocs {
    let _serial = MEASURING.lock().unwrap_or_else(|p| p.into_inner());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(THREADS)
        .start_handler(|_| TAGGED.with(|t| t.set(true)))
        .build()
        .unwrap();
    pool.install(|| {
        for _ in 0..WARMUP {
            layer.forward(x, logits).unwrap();
        }
    });
    let out = pool.install(|| {
        COUNT.store(0, Ordering::Relaxed);
        BYTES.store(0, Ordering::Relaxed);
        ARMED.store(true, Ordering::SeqCst);
        let out = layer.forward(x, logits);
        ARMED.store(false, Ordering::SeqCst);
        out
    });
    let out = out.unwrap();
    assert_eq!(out.shape(), x.shape());
    let count = COUNT.load(Ordering::Relaxed);
    Allocs {
        count,
        bytes: BYTES.load(Ordering::Relaxed),
        sizes: SIZES[..count.min(KEPT)]
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect(),
    }
}

// A small Mixtral: 8 experts, top-2 renormalized softmax routing, SwiGLU, bf16 activations
// and f32 router logits (a gate's output).
const E: usize = 8;
const K: usize = 2;
const H: usize = 256;
const I: usize = 128;
const T: usize = 16;

fn mixtral(backend: &str, quant: QuantAlgo) -> MoeConfig {
    let mut c = MoeConfig::new(E, H, I, DType::BF16, RoutingMethod::Renormalize { top_k: K });
    c.backend = Some(backend.into());
    c.quant = QuantConfig {
        algo: quant,
        ..QuantConfig::default()
    };
    c
}

fn inputs() -> (Tensor, Tensor) {
    let mut rng = Rng::new(11);
    (
        rng.tensor(DType::BF16, vec![T, H], 1.0),
        rng.tensor(DType::F32, vec![T, E], 3.0),
    )
}

/// Warms up a loaded layer of `backend` and `quant` and counts one more forward.
fn run(backend: &str, quant: QuantAlgo) -> Allocs {
    let c = mixtral(backend, quant);
    let w = match quant {
        QuantAlgo::None => expert_weights(&mut Rng::new(3), E, H, I, DType::BF16),
        _ => quantized_weights(&mut Rng::new(3), &c.quant, (E, H, I), 0.5, [4.0, 4.0]),
    };
    let mut layer = create_moe(c).unwrap();
    layer.load_weights(&w as &dyn WeightSource).unwrap();
    let (x, logits) = inputs();
    measure(&mut layer, &x, &logits)
}

/// What one forward may allocate, each with its reason: nothing of `x`'s or the logits'
/// (the schedulers borrow both, and `quantize_input` lends `x` back for formats that read
/// activations as they are), nothing of the CPU backends' permutation, row buffers and tiles
/// (their workspace and scratch pool, grown during the warm-up).
fn allowed(backend: &str) -> Vec<(&'static str, usize)> {
    let shape = 2 * size_of::<usize>();
    let mut a = vec![
        // Routing returns new tensors and keeps per-call row scratch (`moe_core::routing`).
        ("routing scratch: scores [E] f32", 4 * E),
        ("routing scratch: selection scores [E] f32", 4 * E),
        (
            "routing scratch: top-k buffer, k + 1 entries",
            (K + 1) * size_of::<(f32, usize)>(),
        ),
        ("routing ids [T, k] i32", 4 * T * K),
        ("routing weights [T, k] f32", 4 * T * K),
        ("routing ids' shape", shape),
        ("routing weights' shape", shape),
        // The layer returns its output by value.
        ("output [T, H] bf16", 2 * T * H),
        ("output's shape", shape),
    ];
    if backend == "reference" {
        // The oracle keeps no workspace: plain per-call buffers, f32 sums and f64 rows.
        a.extend([
            ("reference sums [T, H] f32", 4 * T * H),
            ("reference accumulator [H] f64", 8 * H),
            ("reference fc1 row [2I] f64", 8 * 2 * I),
            ("reference activation row [I] f64", 8 * I),
            ("reference input row [H] f32", 4 * H),
            ("reference fc2 input row [I] f32", 4 * I),
        ]);
    }
    a
}

/// Whether the CPU kernels take the `gemm` crate's path (no AVX2/AVX-512 kernels on this
/// machine, or `MOE_CPU_ISA=portable`), whose packing buffers are allocated per call: the
/// same detection as `moe_kernels::cpu::simd_gemm::detected`, kept here so this test reads
/// no kernel internals.
fn gemm_crate_path() -> bool {
    if std::env::var("MOE_CPU_ISA").as_deref() == Ok("portable") {
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        !(has!("avx512f") || (has!("avx2") && has!("fma") && has!("f16c")))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// `measured` must be exactly `allowed` (as multisets of sizes), or, where the GEMMs are the
/// `gemm` crate's, contain it plus that crate's packing buffers.
fn check(case: &str, measured: &Allocs, allowed: &[(&'static str, usize)], packing: bool) {
    let mut want: Vec<usize> = allowed.iter().map(|&(_, b)| b).collect();
    want.sort_unstable();
    let mut got = measured.sizes.clone();
    got.sort_unstable();
    let listing = allowed
        .iter()
        .map(|(what, b)| format!("  {b:>6} B  {what}"))
        .collect::<Vec<_>>()
        .join("\n");
    let explain = format!(
        "{case}: a steady-state forward made {} allocations of {} bytes, sizes in order {:?};\n\
         allowed ({} allocations of {} bytes):\n{listing}\n\
         (an allocation of {} bytes besides the output is a copy of x)",
        measured.count,
        measured.bytes,
        measured.sizes,
        want.len(),
        want.iter().sum::<usize>(),
        2 * T * H,
    );
    assert!(measured.count <= KEPT, "{explain}");
    if !packing {
        assert_eq!(got, want, "{explain}");
        assert_eq!(measured.bytes, want.iter().sum::<usize>(), "{explain}");
        return;
    }
    // Every allowed allocation is there; the rest are the gemm crate's (never x-sized).
    for b in &want {
        let i = got.iter().position(|g| g == b).unwrap_or_else(|| panic!("{explain}"));
        got.remove(i);
    }
    println!("{case}: the gemm crate's packing buffers: {got:?}");
    assert!(!got.contains(&(2 * T * H)), "{explain}");
}

#[test]
fn steady_state_host_forward_allocates_nothing_beyond_its_workspaces() {
    let packing = gemm_crate_path();
    for (backend, quant) in [
        ("cpu", QuantAlgo::None),
        ("cpu-fused", QuantAlgo::None),
        ("reference", QuantAlgo::None),
        // Weight-only MXFP4: activations stay values, so they are lent, not quantized.
        ("cpu", QuantAlgo::W4A16Mxfp4),
        ("reference", QuantAlgo::W4A16Mxfp4),
    ] {
        let case = format!("{backend} {quant:?}");
        let measured = run(backend, quant);
        println!(
            "{case}: {} allocations, {} bytes: {:?}",
            measured.count, measured.bytes, measured.sizes
        );
        check(&case, &measured, &allowed(backend), packing && backend != "reference");
    }
}
