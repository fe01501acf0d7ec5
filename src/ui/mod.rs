//! What a person sees: progress bars (only on a terminal) and summary tables.
//!
//! Commands report progress through the [`Progress`] trait so that the work code never asks
//! whether a terminal is attached; [`progress_for`] picks a bar or the null implementation.

use std::io::IsTerminal;

/// Progress of a long job; implementations must be cheap to call per item.
pub trait Progress: Send + Sync {
    fn set_length(&self, _len: u64) {}
    fn inc(&self, _n: u64) {}
    fn set_message(&self, _msg: &str) {}
    fn finish(&self) {}
}

/// Draws nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn set_length(&self, len: u64) {
        self.0.set_length(len);
    }
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }
    fn set_message(&self, msg: &str) {
        self.0.set_message(msg.to_string());
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A progress bar on stderr when it is a terminal and progress is wanted; otherwise nothing.
pub fn progress_for(what: &str, wanted: bool) -> Box<dyn Progress> {
    if !wanted || !std::io::stderr().is_terminal() {
        return Box::new(NoProgress);
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    Box::new(Bar(bar))
}

/// Whether colour may be used on stdout: a terminal and no `NO_COLOR`.
pub fn colour_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
}

/// A summary table: comfy-table with a terminal-width layout, plain ASCII otherwise.
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    if std::io::stdout().is_terminal() {
        t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    } else {
        t.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    }
    t.set_header(header.iter().copied());
    t
}
