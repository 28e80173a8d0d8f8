//! Pattern rules: architecture invariants 3-6 and 9 of `ARCHITECTURE-BRIEF.md` written as
//! absences over source lines (comments blanked out), each scoped to the files of one owner.
//!
//! The needles that would match this file itself are assembled with `concat!`, so the rule
//! set can scan the whole workspace, xtask included.

use super::Violation;
use super::source::{SourceFile, word_positions};

/// One rule: where it looks and what it refuses.
pub struct PatternRule {
    pub id: &'static str,
    /// What the rule keeps absent, for `--list` and the docs.
    pub what: &'static str,
    /// Path prefixes (relative, `/`-separated; a `*` segment matches any one segment) the
    /// rule scans; `""` = everywhere.
    pub include: &'static [&'static str],
    /// Path prefixes exempt from it (same syntax).
    pub exclude: &'static [&'static str],
    /// A code line -> what is wrong with it.
    pub find: fn(&str) -> Option<String>,
    /// Whole files the rule does not apply to, decided from their contents.
    pub exempt: Option<fn(&SourceFile) -> bool>,
}

/// Communication strategies and groups of `moe-comm` (built by callers, owned by the assembler).
const COMM_STRATEGIES: &[&str] = &[
    "AllGatherReduceScatter",
    "AllToAll",
    "PackedAllGather",
    "InProcessGroup",
];

/// The weight-lifecycle hooks of `MoeBackend` and `QuantMethod`.
const LIFECYCLE_HOOKS: &[&str] = &[
    "load_weights",
    "create_weights",
    "post_load_weights",
    "process_weights_after_loading",
    "pre_reload_weights",
];

pub const RULES: &[PatternRule] = &[
    PatternRule {
        id: "repeat-idx",
        what: "only the assembler (crates/moe/src) writes `repeat_idx` (invariants 3, 4)",
        include: &["crates/"],
        exclude: &["crates/moe/src/"],
        find: writes_repeat_idx,
        exempt: None,
    },
    PatternRule {
        id: "construct-in-assembler",
        what: "outside the assembler crate, library code builds no scheduler and no backend from the registry; layers come from moe::create_moe (invariant 3)",
        include: &["crates/*/src/"],
        // The scheduler crate defines `create_moe_scheduler`; the testkit builds layers
        // through `create_moe_with` only, but reads the registry's capabilities.
        exclude: &["crates/moe/src/", "crates/moe-scheduler/src/"],
        find: constructs_layer_parts,
        exempt: None,
    },
    PatternRule {
        id: "scheduler-no-lifecycle",
        what: "schedulers never call the weight-lifecycle hooks (invariant 4)",
        include: &["crates/moe-scheduler/src/"],
        exclude: &[],
        find: calls_lifecycle_hook,
        exempt: None,
    },
    PatternRule {
        id: "scheduler-no-comm-lifetime",
        what: "schedulers never create or destroy a communication strategy; they replace one only through CommHandle::determine_communication_method (invariant 4)",
        include: &["crates/moe-scheduler/src/"],
        exclude: &[],
        find: manages_comm_lifetime,
        exempt: None,
    },
    PatternRule {
        id: "backend-no-policy",
        what: "backends hold no chunking, EPLB ordering or host communication (invariant 5)",
        include: &["crates/moe-backends/src/"],
        exclude: &[],
        find: names_forward_policy,
        exempt: None,
    },
    PatternRule {
        id: "backend-no-policy",
        what: "a backend names ProcessGroup only if it declares SchedulerKind::FusedComm (its kernel owns the exchange; the assembler binds the group) (invariant 5)",
        include: &["crates/moe-backends/src/"],
        exclude: &[],
        find: names_process_group,
        exempt: Some(declares_fused_comm),
    },
    PatternRule {
        id: "compute-entry",
        what: "the scheduler and the assembler reach compute only through MoeBackend::run_moe: no moe_kernels::cpu, no ops::linear (invariant 6)",
        include: &["crates/moe-scheduler/src/", "crates/moe/src/"],
        exclude: &[],
        find: reaches_cpu_kernels,
        exempt: None,
    },
    PatternRule {
        id: "cuda-unsafe-in-ffi",
        what: "moe-kernels' CUDA module keeps all its `unsafe` (kernel launches, byte-buffer views, cuBLAS) in cuda/enabled/ffi.rs, and the one cuBLASLt call in cuda/enabled/ffi_cublaslt.rs, the files to audit",
        include: &["crates/moe-kernels/src/cuda/"],
        exclude: &[
            "crates/moe-kernels/src/cuda/enabled/ffi.rs",
            "crates/moe-kernels/src/cuda/enabled/ffi_cublaslt.rs",
        ],
        find: uses_unsafe,
        exempt: None,
    },
    PatternRule {
        id: "nccl-unsafe-in-ffi",
        what: "moe-comm's NCCL group keeps all its `unsafe` (communicator handles, NCCL calls, device copies) in nccl_group/ffi.rs, the file to audit",
        include: &["crates/moe-comm/src/nccl_group/"],
        exclude: &["crates/moe-comm/src/nccl_group/ffi.rs"],
        find: uses_unsafe_outside_nccl_ffi,
        exempt: None,
    },
    PatternRule {
        id: "no-adhoc-skip",
        what: "no ignored test anywhere, no printed skip outside moe-testkit: skips come from its can_implement-derived matrix (invariant 9)",
        include: &[""],
        exclude: &[],
        find: ignores_test,
        exempt: None,
    },
    PatternRule {
        id: "no-adhoc-skip",
        what: "no test skips itself by printing and returning; only moe-testkit reports skips (invariant 9)",
        include: &[""],
        exclude: &["crates/moe-testkit/src/"],
        find: prints_skip,
        exempt: None,
    },
    PatternRule {
        id: "no-should-panic",
        what: "no test expects a panic: bad input is a typed MoeError (invariant 10)",
        include: &[""],
        exclude: &[],
        find: should_panic,
        exempt: None,
    },
];

/// Whether `rel` starts with `prefix`, where a `*` segment of the prefix matches any one
/// segment of the path (`crates/*/src/` matches `crates/moe-hf/src/lib.rs`).
pub fn matches_prefix(prefix: &str, rel: &str) -> bool {
    if !prefix.contains('*') {
        return rel.starts_with(prefix);
    }
    let mut path = rel.split('/');
    let mut segs = prefix.split('/').peekable();
    while let Some(seg) = segs.next() {
        let last = segs.peek().is_none();
        let Some(part) = path.next() else {
            return seg.is_empty();
        };
        let ok = if seg == "*" {
            true
        } else if last {
            part.starts_with(seg)
        } else {
            part == seg
        };
        if !ok {
            return false;
        }
    }
    true
}

fn in_scope(rule: &PatternRule, rel: &str) -> bool {
    rule.include.iter().any(|p| matches_prefix(p, rel)) && !rule.exclude.iter().any(|p| matches_prefix(p, rel))
}

/// Runs every pattern rule over `file`.
pub fn check(file: &SourceFile, out: &mut Vec<Violation>) {
    let applies = |r: &&PatternRule| in_scope(r, &file.rel) && !r.exempt.is_some_and(|ex| ex(file));
    for rule in RULES.iter().filter(applies) {
        for (i, line) in file.code.iter().enumerate() {
            if let Some(msg) = (rule.find)(line) {
                out.push(Violation::new(&file.rel, rule.id, format!("line {}: {msg}", i + 1)));
            }
        }
    }
}

/// The identifier path that ends just before byte `pos` (`self.layer.` -> "self.layer.").
fn path_before(line: &str, pos: usize) -> &str {
    let head = &line[..pos];
    let start = head
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == ':'))
        .map_or(0, |i| i + 1);
    &head[start..]
}

fn writes_repeat_idx(line: &str) -> Option<String> {
    for pos in word_positions(line, "repeat_idx") {
        let after = line[pos + "repeat_idx".len()..].trim_start();
        let path = path_before(line, pos);
        let before = line[..pos - path.len()].trim_end();
        let compound = ["+=", "-=", "*=", "/="].iter().any(|op| after.starts_with(op));
        let assign = after.starts_with('=') && !after.starts_with("==") && !after.starts_with("=>");
        let local_binding = before.ends_with("let") || before.ends_with("let mut");
        let mutator = [".fetch_add(", ".fetch_sub(", ".store(", ".set(", ".replace("]
            .iter()
            .any(|m| after.starts_with(m));
        let borrowed_mut = before.ends_with("&mut");
        if compound || (assign && !local_binding) || mutator || borrowed_mut {
            return Some("writes `repeat_idx`; the assembler advances it once per forward".into());
        }
    }
    None
}

fn calls_lifecycle_hook(line: &str) -> Option<String> {
    for hook in LIFECYCLE_HOOKS {
        for pos in word_positions(line, hook) {
            let called = line[pos + hook.len()..].trim_start().starts_with('(');
            let on_receiver = line[..pos].ends_with('.') || line[..pos].ends_with("::");
            if called && on_receiver {
                return Some(format!(
                    "calls `{hook}`; weight lifecycle belongs to the assembler and the backend"
                ));
            }
        }
    }
    None
}

fn manages_comm_lifetime(line: &str) -> Option<String> {
    for pos in word_positions(line, "destroy") {
        if line[..pos].ends_with('.') && line[pos + "destroy".len()..].trim_start().starts_with('(') {
            return Some("destroys a communication strategy; its lifetime belongs to the assembler".into());
        }
    }
    for strategy in COMM_STRATEGIES {
        for pos in word_positions(line, strategy) {
            if line[pos + strategy.len()..].trim_start().starts_with("::") {
                return Some(format!(
                    "constructs `{strategy}`; strategies are handed to the assembler (LayerParts) and replaced only through CommHandle::determine_communication_method"
                ));
            }
        }
    }
    None
}

fn names_forward_policy(line: &str) -> Option<String> {
    const POLICY: &[(&str, &str)] = &[
        ("moe_max_num_tokens", "chunking is the scheduler's"),
        ("LoadBalancer", "EPLB ordering is the scheduler's"),
        ("Communication", "dispatch/combine strategies are the scheduler's"),
        ("CommHandle", "dispatch/combine strategies are the scheduler's"),
    ];
    POLICY
        .iter()
        .find(|(w, _)| !word_positions(line, w).is_empty())
        .map(|(w, why)| format!("names `{w}`: {why}"))
}

fn names_process_group(line: &str) -> Option<String> {
    (!word_positions(line, "ProcessGroup").is_empty()).then(|| {
        "names `ProcessGroup` without declaring `SchedulerKind::FusedComm`: host communication is the scheduler's"
            .into()
    })
}

fn declares_fused_comm(file: &SourceFile) -> bool {
    file.code.iter().any(|l| l.contains("SchedulerKind::FusedComm"))
}

fn constructs_layer_parts(line: &str) -> Option<String> {
    for pos in word_positions(line, "create_moe_scheduler") {
        let defines = line[..pos].trim_end().ends_with("fn");
        if !defines && line[pos + "create_moe_scheduler".len()..].trim_start().starts_with('(') {
            return Some("builds a scheduler; only ConfigurableMoe does (through moe::create_moe)".into());
        }
    }
    let squashed: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    if squashed.contains(".build)(") {
        return Some(
            "builds a backend from a registry entry; only ConfigurableMoe does (through moe::create_moe)".into(),
        );
    }
    None
}

fn reaches_cpu_kernels(line: &str) -> Option<String> {
    let squashed: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    if squashed.contains("ops::linear(") || squashed.contains("moe_kernels::ops::linear") {
        return Some("calls `ops::linear`; expert compute goes through MoeBackend::run_moe".into());
    }
    let grouped = squashed.contains("moe_kernels::{") && !word_positions(&squashed, "cpu").is_empty();
    if squashed.contains("moe_kernels::cpu") || grouped {
        return Some("reaches `moe_kernels::cpu`; compute goes through MoeBackend::run_moe".into());
    }
    None
}

fn uses_unsafe(line: &str) -> Option<String> {
    (!word_positions(line, "unsafe").is_empty())
        .then(|| "uses `unsafe` outside cuda/enabled/ffi.rs; add a safe wrapper there and call it".into())
}

fn uses_unsafe_outside_nccl_ffi(line: &str) -> Option<String> {
    (!word_positions(line, "unsafe").is_empty())
        .then(|| "uses `unsafe` outside nccl_group/ffi.rs; add a safe wrapper there and call it".into())
}

fn ignores_test(line: &str) -> Option<String> {
    let squashed: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    let attr = concat!("#[", "ignore");
    let cfg_attr = squashed.starts_with(concat!("#[", "cfg_attr(")) && squashed.contains(",ignore");
    if squashed.contains(attr) || cfg_attr {
        return Some("ignores a test; unsupported cells are skipped by moe-testkit from can_implement".into());
    }
    None
}

fn prints_skip(line: &str) -> Option<String> {
    let lower: String = line
        .to_ascii_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let needles = [concat!("print!(", "\"skip"), concat!("println!(", "\"skip")];
    if needles.iter().any(|n| lower.contains(n)) {
        return Some("prints a skip; report skips through moe-testkit so they are counted".into());
    }
    None
}

fn should_panic(line: &str) -> Option<String> {
    let squashed: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    if squashed.contains(concat!("#[", "should_panic")) {
        return Some("expects a panic; assert on the typed MoeError instead".into());
    }
    None
}
