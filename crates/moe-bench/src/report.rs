//! What `moe bench` prints: the text table, one JSON object per row, and the markdown page
//! `docs/BENCHMARKS.md` (machine, ceilings, our rows next to the peer's, ratios, targets).

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::ceilings::Ceilings;
use crate::runner::Row;

/// Prefill rows (T at least this) are held to the GEMM ceiling.
pub const PREFILL_MIN_TOKENS: usize = 512;
/// Decode rows (T at most this) are held to the read bandwidth.
pub const DECODE_MAX_TOKENS: usize = 8;
/// Targets of issue 7.
pub const PREFILL_TARGET: f64 = 0.65;
pub const DECODE_TARGET: f64 = 0.70;

/// The machine the numbers were taken on.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    /// The SIMD features that matter to the kernels.
    pub features: Vec<String>,
    /// `rustc` processes seen while measuring (other builds make the numbers noisy).
    pub busy_rustc: usize,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |key: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        let mut cpu = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
        if let (Some(fam), Some(model)) = (field("cpu family"), field("model\t")) {
            cpu.push_str(&format!(" (family {fam}, model {model})"));
        }
        let flags = field("flags").unwrap_or_default();
        let wanted = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16"];
        let features = wanted
            .iter()
            .filter(|w| flags.split_whitespace().any(|f| f == **w))
            .map(|w| w.to_string())
            .collect();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: mem_kib / (1024.0 * 1024.0),
            features,
            busy_rustc: busy_rustc(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{}, {} cores (nproc), {:.1} GiB, {}",
            self.cpu,
            self.cores,
            self.memory_gib,
            self.features.join(" ")
        )
    }
}

/// `rustc` processes running now (read from `/proc/*/comm`).
pub fn busy_rustc() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "rustc"))
        .count()
}

/// Which ceiling a row is held to: the one the roofline says bounds it.
pub fn bound(row: &Row, c: &Ceilings) -> &'static str {
    if row.memory_bound(c) { "memory" } else { "compute" }
}

/// The JSON object of one row (ceilings and ratios included; `peer` adds the speedup over it).
pub fn row_json(row: &Row, c: &Ceilings, peer: Option<&Row>) -> Value {
    let mut v = json!({
        "preset": row.preset,
        "weights": row.weights,
        "tokens": row.tokens,
        "backend": row.backend,
        "median_ms": row.median_ms,
        "min_ms": row.min_ms,
        "repeats": row.repeats,
        "gflop": row.gflop,
        "weight_bytes": row.weight_bytes,
        "experts_touched": row.experts_touched,
        "gflops": row.gflops,
        "weight_gbps": row.weight_gbps,
        "gemm_ceiling_gflops": c.gemm_gflops,
        "read_ceiling_gbps": c.read_gbps,
        "gemm_ratio": row.gemm_ratio(c),
        "read_ratio": row.read_ratio(c),
        "bound": bound(row, c),
        "roofline_ratio": row.roofline_ratio(c),
    });
    if let Some(p) = peer {
        v["peer"] = json!({ "backend": p.backend, "median_ms": p.median_ms, "speedup": p.median_ms / row.median_ms });
    }
    v
}

fn ratio_cell(row: &Row, c: &Ceilings) -> String {
    if row.memory_bound(c) {
        format!("{:.0}% of read BW", 100.0 * row.read_ratio(c))
    } else {
        format!("{:.0}% of GEMM", 100.0 * row.gemm_ratio(c))
    }
}

/// The peer's row matching `row` (same preset, weights and token count).
pub fn peer_of<'a>(row: &Row, peers: &'a [Row]) -> Option<&'a Row> {
    peers
        .iter()
        .find(|p| p.preset == row.preset && p.weights == row.weights && p.tokens == row.tokens)
}

pub fn ceilings_line(c: &Ceilings) -> String {
    format!(
        "ceilings: f32 GEMM {n}x{n}x{n} (gemm crate, {t} threads) {:.1} GFLOP/s; f32 GEMV read over {} MiB {:.1} GB/s; balance {:.1} FLOP/byte",
        c.gemm_gflops,
        c.gemv_bytes >> 20,
        c.read_gbps,
        c.balance(),
        n = c.gemm_n,
        t = c.threads,
    )
}

/// The text table.
pub fn table(rows: &[Row], peers: &[Row], c: &Ceilings) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<14} {:<9} {:>5} {:<9} {:>10} {:>8} {:>8} {:>7} {:>17} {:>11} {:>8}",
        "preset",
        "weights",
        "T",
        "backend",
        "median ms",
        "GFLOP/s",
        "GB/s",
        "experts",
        "vs ceiling",
        "peer ms",
        "speedup"
    );
    for r in rows {
        let (pm, sp) = match peer_of(r, peers) {
            Some(p) => (
                format!("{:.2}", p.median_ms),
                format!("{:.2}x", p.median_ms / r.median_ms),
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "{:<14} {:<9} {:>5} {:<9} {:>10.2} {:>8.1} {:>8.2} {:>7} {:>17} {:>11} {:>8}",
            r.preset,
            r.weights,
            r.tokens,
            r.backend,
            r.median_ms,
            r.gflops,
            r.weight_gbps,
            r.experts_touched,
            ratio_cell(r, c),
            pm,
            sp
        );
    }
    s
}

/// Verdicts on the targets, one line each.
pub fn targets(rows: &[Row], peers: &[Row], c: &Ceilings) -> Vec<String> {
    let mut out = Vec::new();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let prefill: Vec<&Row> = rows
        .iter()
        .filter(|r| r.tokens >= PREFILL_MIN_TOKENS && r.weights == "bf16")
        .collect();
    if !prefill.is_empty() {
        let worst = prefill.iter().map(|r| r.gemm_ratio(c)).fold(f64::INFINITY, f64::min);
        let cells: Vec<String> = prefill
            .iter()
            .map(|r| format!("{} T={} {:.0}%", r.preset, r.tokens, 100.0 * r.gemm_ratio(c)))
            .collect();
        out.push(format!(
            "prefill (T >= {PREFILL_MIN_TOKENS}, bf16) >= {:.0}% of the GEMM ceiling: {} (worst {:.0}%: {})",
            100.0 * PREFILL_TARGET,
            verdict(worst >= PREFILL_TARGET),
            100.0 * worst,
            cells.join(", ")
        ));
    }
    let decode: Vec<&Row> = rows.iter().filter(|r| r.tokens <= DECODE_MAX_TOKENS).collect();
    if !decode.is_empty() {
        let worst = decode.iter().map(|r| r.read_ratio(c)).fold(f64::INFINITY, f64::min);
        let cells: Vec<String> = decode
            .iter()
            .map(|r| format!("{} T={} {:.0}%", r.preset, r.tokens, 100.0 * r.read_ratio(c)))
            .collect();
        out.push(format!(
            "decode (T <= {DECODE_MAX_TOKENS}) >= {:.0}% of the read bandwidth: {} (worst {:.0}%: {})",
            100.0 * DECODE_TARGET,
            verdict(worst >= DECODE_TARGET),
            100.0 * worst,
            cells.join(", ")
        ));
    }
    let paired: Vec<(&Row, &Row)> = rows.iter().filter_map(|r| peer_of(r, peers).map(|p| (r, p))).collect();
    if !paired.is_empty() {
        let worst = paired
            .iter()
            .map(|(r, p)| p.median_ms / r.median_ms)
            .fold(f64::INFINITY, f64::min);
        out.push(format!(
            "faster than {} on every row: {} (smallest speedup {:.2}x over {} rows)",
            paired[0].1.backend,
            verdict(worst > 1.0),
            worst,
            paired.len()
        ));
    }
    out
}

/// Today's date (UTC) as `YYYY-MM-DD`, from the system clock.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = (secs / 86400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Everything the markdown page needs.
pub struct Page<'a> {
    pub machine: &'a Machine,
    pub ceilings: &'a Ceilings,
    pub rows: &'a [Row],
    pub peers: &'a [Row],
    /// Rows the run left out, with why.
    pub not_run: &'a [String],
    /// The command that regenerates the page.
    pub command: &'a str,
}

/// Everything from this line on in `docs/BENCHMARKS.md` (the GPU sections) survives a
/// regeneration of the CPU part.
pub const KEPT_MARKER: &str = "<!-- GPU sections: kept when `cargo xtask bench` regenerates the CPU part above -->";

/// `docs/BENCHMARKS.md`.
pub fn markdown(p: &Page<'_>) -> String {
    let c = p.ceilings;
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "<!-- Generated by `{}` on {}; do not edit by hand: rerun it. -->\n",
        p.command,
        today()
    );
    let _ = writeln!(
        s,
        "The MoE layer on CPU, measured against this machine's own limits and against candle's MoE block on the same weights and inputs.\n"
    );
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(s, "- CPU: {} ({} cores per `nproc`)", p.machine.cpu, p.machine.cores);
    let _ = writeln!(s, "- Memory: {:.1} GiB", p.machine.memory_gib);
    let _ = writeln!(s, "- SIMD: {}", p.machine.features.join(", "));
    if p.machine.busy_rustc > 0 {
        let _ = writeln!(
            s,
            "- **Noise:** {} `rustc` processes were running while measuring; the numbers are noisier than on a quiet machine.",
            p.machine.busy_rustc
        );
    } else {
        let _ = writeln!(s, "- No `rustc` was running at the start of the measurement.");
    }
    let _ = writeln!(s, "\n## Ceilings (measured in the same run)\n");
    let _ = writeln!(
        s,
        "Best of 10 timed repetitions after a warm-up (a ceiling is what the machine can do; a higher one only makes the ratios below stricter).\n"
    );
    let _ = writeln!(s, "| ceiling | how | value |\n|---|---|---|");
    let _ = writeln!(
        s,
        "| compute | f32 GEMM {n}x{n}x{n}, `gemm` crate, {} threads | {:.1} GFLOP/s |",
        c.threads,
        c.gemm_gflops,
        n = c.gemm_n
    );
    let _ = writeln!(
        s,
        "| memory | f32 GEMV over a {} MiB matrix, {} threads | {:.1} GB/s |",
        c.gemv_bytes >> 20,
        c.threads,
        c.read_gbps
    );
    let _ = writeln!(s, "| balance | GEMM / read | {:.1} FLOP per weight byte |", c.balance());
    let _ = writeln!(s, "\n## Results\n");
    let _ = writeln!(
        s,
        "Median of the timed repeats after one warm-up forward. GFLOP/s counts the routed experts' FLOPs (`2·T·k·3·H·I`); GB/s counts the bytes of the experts the routing actually selected, each once. \"vs ceiling\" holds each row to the ceiling that bounds it on this machine (memory when the row does fewer FLOPs per weight byte than the balance point, compute otherwise).\n"
    );
    let peer_name = p.peers.first().map_or("peer", |r| r.backend.as_str());
    let _ = writeln!(
        s,
        "| preset | weights | T | experts read | ours ms | ours GFLOP/s | ours GB/s | vs ceiling | {peer_name} ms | {peer_name} GFLOP/s | speedup |\n|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"
    );
    for r in p.rows {
        let (pm, pg, sp) = match peer_of(r, p.peers) {
            Some(q) => (
                format!("{:.2}", q.median_ms),
                format!("{:.1}", q.gflops),
                format!("**{:.2}x**", q.median_ms / r.median_ms),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} | {:.1} | {:.2} | {} | {pm} | {pg} | {sp} |",
            r.preset,
            r.weights,
            r.tokens,
            r.experts_touched,
            r.median_ms,
            r.gflops,
            r.weight_gbps,
            ratio_cell(r, c)
        );
    }
    if !p.not_run.is_empty() {
        let _ = writeln!(
            s,
            "\nNot in the default run (each would take minutes on this machine; `moe bench --preset P --tokens N` runs one):\n"
        );
        for n in p.not_run {
            let _ = writeln!(s, "- {n}");
        }
    }
    let _ = writeln!(s, "\n## Targets (issue 7)\n");
    for t in targets(p.rows, p.peers, c) {
        let _ = writeln!(s, "- {t}");
    }
    let _ = writeln!(s, "\n## How it is measured\n");
    let _ = writeln!(
        s,
        "- Presets: `qwen3-30b-a3b` (H=2048, I=768, E=128, k=8, bf16), `mixtral-8x7b` (H=4096, I=14336, E=8, k=2, bf16), `deepseek-v3` (H=7168, I=2048, E=256, k=8, FP8 e4m3 with one f32 scale per 128x128 block, as released; bf16 would be 22.5 GB).\n\
         - Weights: uniform with variance 1/fan_in, generated once per preset and cached as safetensors under `.moe-cache/bench/`; FP8 weights are those values through the project's DeepSeek FP8-block quantizer. Inputs: x ~ N(0, 1) in bf16, router logits ~ N(0, 1); every row uses the first T rows of the same inputs.\n\
         - Routing: softmax, top-k, renormalized, on both sides, so both read the same experts.\n\
         - Ours: `moe bench` through `moe::create_moe` (backend `cpu`), one forward of T tokens (no chunking), output in bf16.\n\
         - {peer_name}: `benches/candle-peer`, candle's per-expert MoE block as candle-transformers' Mixtral and Qwen3-MoE write it (router top-k on the host, then per expert `index_select`, gate/up/down matmuls, `index_add`), on the same cached weights and inputs with bf16 weights and activations; FP8 experts are dequantized per expert and forward (to f32) with candle ops, since candle has no FP8 matmul on CPU.\n\
         - Regenerate with `{}` on a quiet machine (no concurrent builds).",
        p.command
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preset::Preset;

    fn row(tokens: usize, backend: &str, ms: f64, touched: usize) -> Row {
        let mut t = [ms / 1e3];
        Row::new(&Preset::find("tiny").unwrap(), tokens, backend, &mut t, touched)
    }

    #[test]
    fn targets_and_peer_speedups() {
        let c = Ceilings {
            gemm_n: 8,
            gemm_gflops: 100.0,
            gemv_bytes: 1 << 20,
            read_gbps: 20.0,
            threads: 2,
        };
        let ours = [row(1, "cpu", 0.001, 2), row(512, "cpu", 0.2, 8)];
        let peers = [row(1, "candle", 0.004, 2), row(512, "candle", 0.1, 8)];
        let t = targets(&ours, &peers, &c);
        assert_eq!(t.len(), 3);
        // T=512: 512 * 24576 FLOP in 0.2 ms = 62.9 GFLOP/s: 63% of 100, under 65%.
        assert!(t[0].contains("NOT met") && t[0].contains("63%"), "{}", t[0]);
        // T=1: 24576 bytes in 1 us = 24.6 GB/s: above 70% of 20.
        assert!(t[1].contains(": met"), "{}", t[1]);
        // The T=512 row is slower than the peer.
        assert!(t[2].contains("NOT met") && t[2].contains("0.50x"), "{}", t[2]);
        let j = row_json(&ours[0], &c, Some(&peers[0]));
        assert_eq!(j["peer"]["speedup"].as_f64().map(|v| (v * 100.0).round()), Some(400.0));
        for key in ["preset", "tokens", "backend", "median_ms", "gflops", "weight_gbps"] {
            assert!(j.get(key).is_some(), "{key}");
        }
        let page = markdown(&Page {
            machine: &Machine::probe(),
            ceilings: &c,
            rows: &ours,
            peers: &peers,
            not_run: &[],
            command: "x",
        });
        assert!(page.contains("| tiny | bf16 | 1 |") && page.contains("**4.00x**"));
    }

    #[test]
    fn dates_are_civil() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}
