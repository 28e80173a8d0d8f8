//! A progress bar for work that may run long (the default EPLB planner takes seconds per layer
//! at tens of thousands of slots): nothing for work done within a second, then a bar on stderr
//! (drawn only when stderr is a terminal) with the items done and the elapsed time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long work runs before the bar appears.
const QUIET: Duration = Duration::from_secs(1);

/// Runs `work`, handing it a callback to report how many of `total` items (`what`) are done;
/// a bar shows once the work has run past [`QUIET`]. Without a thread for the bar (the system
/// refuses one), the work runs without it.
pub fn while_running<T>(what: &str, total: usize, work: impl FnOnce(&dyn Fn(usize)) -> T) -> T {
    let done = AtomicUsize::new(0);
    let done = &done;
    let report = |n: usize| done.store(n, Ordering::Relaxed);
    let (finished, wait) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let watcher = std::thread::Builder::new()
            .name("moe-progress".into())
            .spawn_scoped(s, move || {
                if wait.recv_timeout(QUIET) != Err(mpsc::RecvTimeoutError::Timeout) {
                    return;
                }
                let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
                if let Ok(style) =
                    ProgressStyle::with_template(&format!("{{spinner}} {what} {{pos}}/{{len}} {{bar:30}} {{elapsed}}"))
                {
                    bar.set_style(style);
                }
                while wait.recv_timeout(Duration::from_millis(100)) == Err(mpsc::RecvTimeoutError::Timeout) {
                    bar.set_position(done.load(Ordering::Relaxed) as u64);
                    bar.tick();
                }
                bar.finish_and_clear();
            });
        let out = work(&report);
        drop(finished);
        if let Ok(h) = watcher {
            let _ = h.join();
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_runs_and_its_result_comes_back_quick_or_slow() {
        assert_eq!(
            while_running("items", 2, |done| {
                done(1);
                done(2);
                7
            }),
            7
        );
        let slow = while_running("items", 1, |done| {
            std::thread::sleep(Duration::from_millis(1200));
            done(1);
            "slow"
        });
        assert_eq!(slow, "slow");
    }
}
