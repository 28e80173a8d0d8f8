//! The fuzz loop: corpus in, mutations through a target under `catch_unwind` and a time
//! bound, findings saved to disk, a report out.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::mutate::{Rng, mutate};
use crate::targets::Target;

/// How to run one target.
#[derive(Clone, Debug)]
pub struct Options {
    pub seconds: f64,
    pub seed: u64,
    /// One input running longer than this is a finding (work not bounded by the checks).
    pub max_input: Duration,
    /// Where the seed corpus of every target lives (`corpus/<target>/`).
    pub corpus_dir: PathBuf,
    /// Where findings are written (`<dir>/<target>-<n>.bin`).
    pub crash_dir: PathBuf,
}

/// An input that panicked or ran too long.
#[derive(Clone, Debug)]
pub struct Finding {
    pub kind: &'static str,
    pub detail: String,
    pub saved: Option<PathBuf>,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Report {
    pub target: &'static str,
    pub iterations: u64,
    pub seconds: f64,
    pub corpus: usize,
    /// Distinct outcomes seen (success and error texts with digits removed).
    pub outcomes: usize,
    pub slowest: Duration,
    pub findings: Vec<Finding>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} inputs in {:.1} s ({:.0}/s), corpus {}, {} outcomes, slowest {:.1} ms, {} finding(s)",
            self.target,
            self.iterations,
            self.seconds,
            self.iterations as f64 / self.seconds.max(1e-9),
            self.corpus,
            self.outcomes,
            self.slowest.as_secs_f64() * 1e3,
            self.findings.len()
        )
    }
}

/// The committed seeds of `target` (every file of its corpus directory, by name).
pub fn seeds(corpus_dir: &Path, target: &str) -> std::io::Result<Vec<Vec<u8>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(corpus_dir.join(target))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths.iter().map(std::fs::read).collect()
}

/// An outcome's class for corpus feedback: the error text without digits, cut short.
fn signature(r: &Result<(), String>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => e.chars().filter(|c| !c.is_ascii_digit()).take(80).collect(),
    }
}

/// Fuzzes `target` for `opts.seconds`; every seed runs once first, unmutated.
pub fn run(target: Target, opts: &Options) -> std::io::Result<Report> {
    let mut corpus = seeds(&opts.corpus_dir, target.name)?;
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let seeds_len = corpus.len();
    let mut rng = Rng::new(opts.seed);
    let mut seen = HashSet::new();
    let mut report = Report {
        target: target.name,
        iterations: 0,
        seconds: 0.0,
        corpus: 0,
        outcomes: 0,
        slowest: Duration::ZERO,
        findings: Vec::new(),
    };
    // Panics are the findings; their default message would flood stderr, so a silent hook
    // records the last one's text and location instead.
    let last_panic = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let hook = std::panic::take_hook();
    {
        let last = last_panic.clone();
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(mut l) = last.lock() {
                *l = info.to_string();
            }
        }));
    }
    let start = Instant::now();
    let mut i = 0usize;
    while i < seeds_len || start.elapsed().as_secs_f64() < opts.seconds {
        let input = if i < seeds_len {
            corpus[i].clone()
        } else {
            let base = &corpus[rng.below(corpus.len())];
            mutate(&mut rng, base, &corpus, target.max_len)
        };
        i += 1;
        let t0 = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
        let took = t0.elapsed();
        report.iterations += 1;
        report.slowest = report.slowest.max(took);
        let finding = match &outcome {
            Err(_) => Some(("panic", last_panic.lock().map(|l| l.clone()).unwrap_or_default())),
            Ok(_) if took > opts.max_input => Some(("slow", format!("{:.0} ms", took.as_secs_f64() * 1e3))),
            Ok(_) => None,
        };
        if let Some((kind, detail)) = finding {
            let saved = save(&opts.crash_dir, target.name, report.findings.len(), &input);
            report.findings.push(Finding { kind, detail, saved });
            continue;
        }
        if let Ok(r) = &outcome
            && seen.insert(signature(r))
            && corpus.len() < 4096
        {
            corpus.push(input);
        }
    }
    std::panic::set_hook(hook);
    report.seconds = start.elapsed().as_secs_f64();
    report.corpus = corpus.len();
    report.outcomes = seen.len();
    Ok(report)
}

/// Writes a finding's input for replay; `None` when the directory cannot take it.
fn save(dir: &Path, target: &str, n: usize, input: &[u8]) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).ok()?;
    let path = dir.join(format!("{target}-{}-{n}.bin", std::process::id()));
    std::fs::write(&path, input).ok().map(|()| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_target_is_a_finding_with_its_input_saved() {
        fn boom(b: &[u8]) -> Result<(), String> {
            if b.len() > 3 {
                panic!("too long");
            }
            Err(format!("short {}", b.len()))
        }
        let dir = std::env::temp_dir().join(format!("moe-fuzz-runner-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("corpus/boom")).unwrap();
        std::fs::write(dir.join("corpus/boom/seed"), b"abcd").unwrap();
        let opts = Options {
            seconds: 0.2,
            seed: 1,
            max_input: Duration::from_secs(1),
            corpus_dir: dir.join("corpus"),
            crash_dir: dir.join("crashes"),
        };
        let target = Target {
            name: "boom",
            what: "",
            run: boom,
            max_len: 16,
        };
        let r = run(target, &opts).unwrap();
        assert!(r.iterations > 1 && !r.findings.is_empty(), "{r}");
        assert_eq!(r.findings[0].kind, "panic");
        assert!(r.findings[0].detail.contains("too long"), "{:?}", r.findings[0]);
        assert_eq!(std::fs::read(r.findings[0].saved.as_ref().unwrap()).unwrap(), b"abcd");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
