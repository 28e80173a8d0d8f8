//! The fuzz targets: each takes bytes, calls the real parsing code of one input, and returns
//! `Ok` or the typed error's text. A panic or a run past the time bound is the bug the fuzzer
//! looks for; an error is the expected answer to most mutated inputs.

use std::path::PathBuf;

use moe_eplb::{Algorithm, PlanInput, PlanOutput};
use moe_hf::{Checkpoint, HfConfig};

/// One fuzz target.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub name: &'static str,
    pub what: &'static str,
    pub run: fn(&[u8]) -> Result<(), String>,
    /// Longest input the mutator makes for this target.
    pub max_len: usize,
}

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    Target {
        name: "config",
        what: "config.json -> HfConfig -> MoeConfig of the first MoE layer",
        run: config,
        max_len: 1 << 16,
    },
    Target {
        name: "safetensors",
        what: "a safetensors file through Checkpoint::open_file, every tensor read and finite-checked",
        run: safetensors,
        max_len: 1 << 20,
    },
    Target {
        name: "placement",
        what: "placement YAML through load_placement_yaml and every layer's config",
        run: placement,
        max_len: 1 << 16,
    },
    Target {
        name: "load",
        what: "load JSON ({\"load\": ...}) and previous plans through serde and validate_load",
        run: load,
        max_len: 1 << 16,
    },
    Target {
        name: "planner",
        what: "planner input decoded from bytes through plan() with every algorithm",
        run: planner,
        max_len: 1 << 12,
    },
];

impl Target {
    /// The target called `name`.
    pub fn by_name(name: &str) -> Option<Target> {
        TARGETS.iter().copied().find(|t| t.name == name)
    }
}

fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

fn config(bytes: &[u8]) -> Result<(), String> {
    let hf = HfConfig::from_json_str(&text(bytes), "config.json").map_err(|e| e.to_string())?;
    let _ = hf.routing();
    let _ = hf.checkpoint_quant();
    let _ = hf.check_layer(usize::MAX);
    let layer = hf.first_moe_layer().ok_or("no MoE layer")?;
    hf.moe_config(layer, None).map(|_| ()).map_err(|e| e.to_string())
}

/// A file of this process's own, rewritten for every input (the loader maps files).
fn scratch_file() -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_alphanumeric(), "");
    std::env::temp_dir().join(format!("moe-fuzz-{}-{thread}.safetensors", std::process::id()))
}

fn safetensors(bytes: &[u8]) -> Result<(), String> {
    let path = scratch_file();
    std::fs::write(&path, bytes).map_err(|e| format!("scratch file: {e}"))?;
    let result = (|| {
        let ckpt = Checkpoint::open_file(&path).map_err(|e| e.to_string())?;
        let names: Vec<String> = ckpt.names().map(str::to_string).collect();
        for name in &names {
            let _ = ckpt.info(name);
            if let Ok(view) = ckpt.tensor(name) {
                let _ = view.to_tensor(name);
            }
        }
        moe_hf::check_finite(&ckpt, "").map(|_| ()).map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_file(&path);
    result
}

fn placement(bytes: &[u8]) -> Result<(), String> {
    let f = moe_eplb::load_placement_yaml(&text(bytes)).map_err(|e| e.to_string())?;
    for &layer in f.layers.keys() {
        f.layer(layer).map_err(|e| e.to_string())?;
    }
    f.layer(0).map(|_| ()).map_err(|e| e.to_string())
}

fn load(bytes: &[u8]) -> Result<(), String> {
    let t = text(bytes);
    if let Ok(prev) = serde_json::from_str::<PlanOutput>(&t) {
        let _ = prev.phy2log.len();
    }
    let input: PlanInput = serde_json::from_str(&t).map_err(|e| e.to_string())?;
    let e = moe_eplb::validate_load(&input.load).map_err(|e| e.to_string())?;
    // What `moe eplb stats` computes for a geometry: the default table on two GPUs.
    for row in &input.load {
        let slots = e.next_multiple_of(2);
        let _ = moe_eplb::balancedness(row, &moe_eplb::default_assignment(e, slots, 2), 2);
    }
    Ok(())
}

/// Planner input from bytes: a header (algorithm, sizes, flags) and then loads; sizes are
/// kept small enough for thousands of runs a second, and anything the planner refuses is an
/// error, which is fine.
fn planner(bytes: &[u8]) -> Result<(), String> {
    let b = |i: usize| bytes.get(i).copied().unwrap_or(0) as usize;
    let experts = 1 + b(1) % 32;
    let gpus = 1 + b(2) % 8;
    let slots = b(3) + (b(4) % 4) * 256;
    let nodes = 1 + b(5) % 4;
    let groups = 1 + b(6) % 8;
    let layers = 1 + b(7) % 3;
    let flags = b(8);
    let algorithm = match b(0) % 3 {
        0 => Algorithm::DeepSeek,
        1 => Algorithm::Greedy,
        _ => Algorithm::Default {
            max_changed_slots: (flags & 2 != 0).then(|| b(9) % 16),
        },
    };
    let mut at = 10;
    let mut next = || {
        at += 2;
        let v = (b(at - 2) << 8) | b(at - 1);
        match v >> 12 {
            0xF => [f64::NAN, f64::INFINITY, -1.0, 1e308, 0.0, f64::MIN_POSITIVE][v % 6],
            _ => v as f64 / 7.0,
        }
    };
    let ragged = flags & 4 != 0;
    let load: Vec<Vec<f64>> = (0..layers)
        .map(|l| (0..experts - usize::from(ragged && l == 1)).map(|_| next()).collect())
        .collect();
    let previous: Option<Vec<Vec<usize>>> = (flags & 1 != 0).then(|| {
        (0..layers)
            .map(|_| (0..slots).map(|s| s.wrapping_add(next() as usize) % experts).collect())
            .collect()
    });
    moe_eplb::plan(&load, slots, gpus, nodes, groups, algorithm, previous.as_deref())
        .map(|_| ())
        .map_err(|e| e.to_string())
}
