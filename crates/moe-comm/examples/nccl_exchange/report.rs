//! A child's result lines: `SUMMARY` rows the launcher tabulates, or one JSON object per
//! result with `--json`.

use std::io::Write;

use moe_core::Result;

pub(crate) struct Report {
    pub(crate) rank: usize,
    pub(crate) json: bool,
    pub(crate) failed: bool,
}

pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Report {
    /// Reports a stage that stopped with an error.
    /// PASS with `checked` (what was checked) when `bad` is empty, else FAIL listing `bad`.
    pub(crate) fn failures(&mut self, stage: &str, bad: &[String], checked: &str) {
        let detail = if bad.is_empty() {
            checked.to_string()
        } else {
            bad.join("; ")
        };
        self.result(stage, Some(bad.is_empty()), &detail, "");
    }

    pub(crate) fn error(&mut self, stage: &str, res: Result<()>) {
        if let Err(e) = res {
            self.result(stage, Some(false), &e.to_string(), "");
        }
    }

    /// One result: `ok` None is informational. `fields` are extra JSON members (`"k":v,...`).
    pub(crate) fn result(&mut self, stage: &str, ok: Option<bool>, detail: &str, fields: &str) {
        let status = match ok {
            Some(true) => "PASS",
            Some(false) => {
                self.failed = true;
                "FAIL"
            }
            None => "INFO",
        };
        let detail = detail.replace(['\n', '\t'], " ");
        println!("SUMMARY\t{stage}\t{status}\t{detail}");
        if self.json {
            let sep = if fields.is_empty() { "" } else { "," };
            println!(
                "{{\"stage\":{},\"rank\":{},\"status\":\"{status}\",\"detail\":{}{sep}{fields}}}",
                json_str(stage),
                self.rank,
                json_str(&detail)
            );
        }
        let _ = std::io::stdout().flush();
    }
}
