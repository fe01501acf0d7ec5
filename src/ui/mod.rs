//! What a person sees: progress bars (only on a terminal), summary tables and colour.
//!
//! Commands report progress through the [`Progress`] trait so that the work code never asks
//! whether a terminal is attached; [`progress_for`] picks a bar or the null implementation.
//! Colour follows one policy, [`colour_enabled`]: every coloured word goes through [`paint`]
//! (or a table cell through [`paint_cell`]), so `NO_COLOR`, pipes and `TERM=dumb` are honoured
//! everywhere. The progress bar's template has no colour in it.

use std::ffi::OsString;
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

/// The stream a piece of text is written to; colour is decided per stream, since
/// `cyrkit mbcheck | less` has stdout piped but stderr on the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn is_terminal(self) -> bool {
        match self {
            Stream::Stdout => std::io::stdout().is_terminal(),
            Stream::Stderr => std::io::stderr().is_terminal(),
        }
    }
}

/// Whether text written to `stream` may be coloured: the stream is a terminal, `NO_COLOR` is
/// unset or empty (https://no-color.org) and `TERM` is not `dumb`.
pub fn colour_enabled(stream: Stream) -> bool {
    colour_policy(
        stream.is_terminal(),
        std::env::var_os("NO_COLOR"),
        std::env::var_os("TERM"),
    )
}

/// [`colour_enabled`] without the environment, for the tests.
fn colour_policy(terminal: bool, no_color: Option<OsString>, term: Option<OsString>) -> bool {
    terminal && no_color.map_or(true, |v| v.is_empty()) && term.map_or(true, |t| t != "dumb")
}

/// The few colours cyrkit uses: red for what is wrong, yellow for warnings, green for the
/// command that repairs it, bold for the mailbox a line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Red,
    Yellow,
    Green,
    Bold,
}

impl Colour {
    fn sgr(self) -> &'static str {
        match self {
            Colour::Red => "\x1b[1;31m",
            Colour::Yellow => "\x1b[33m",
            Colour::Green => "\x1b[32m",
            Colour::Bold => "\x1b[1m",
        }
    }

    fn table(self) -> Option<comfy_table::Color> {
        match self {
            Colour::Red => Some(comfy_table::Color::Red),
            Colour::Yellow => Some(comfy_table::Color::Yellow),
            Colour::Green => Some(comfy_table::Color::Green),
            Colour::Bold => None,
        }
    }
}

const SGR_RESET: &str = "\x1b[0m";

/// `text` in `colour` when [`colour_enabled`] for `stream`, else `text` unchanged.
pub fn paint(stream: Stream, colour: Colour, text: &str) -> String {
    paint_if(colour_enabled(stream), colour, text)
}

fn paint_if(enabled: bool, colour: Colour, text: &str) -> String {
    if enabled && !text.is_empty() {
        format!("{}{text}{SGR_RESET}", colour.sgr())
    } else {
        text.to_string()
    }
}

/// A table cell (tables go to stdout) in `colour` when colour is enabled there.
pub fn paint_cell(colour: Colour, text: impl Into<String>) -> comfy_table::Cell {
    let cell = comfy_table::Cell::new(text.into());
    if !colour_enabled(Stream::Stdout) {
        return cell;
    }
    match colour.table() {
        Some(c) => cell.fg(c),
        None => cell.add_attribute(comfy_table::Attribute::Bold),
    }
}

/// `cyrkit: error: ` with the word in red on a terminal (errors go to stderr).
pub fn error_prefix() -> String {
    format!("cyrkit: {} ", paint(Stream::Stderr, Colour::Red, "error:"))
}

/// `cyrkit: fix: ` with the word in green on a terminal.
pub fn fix_prefix() -> String {
    format!("cyrkit: {} ", paint(Stream::Stderr, Colour::Green, "fix:"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color_or_dumb_term() {
        let os = |s: &str| Some(OsString::from(s));
        assert!(colour_policy(true, None, os("xterm")));
        assert!(colour_policy(true, None, None));
        // An empty NO_COLOR does not count (no-color.org: "present and not an empty string").
        assert!(colour_policy(true, os(""), os("xterm")));
        assert!(!colour_policy(true, os("1"), os("xterm")));
        assert!(!colour_policy(true, os("0"), os("xterm")));
        assert!(!colour_policy(true, None, os("dumb")));
        assert!(!colour_policy(false, None, os("xterm")));
    }

    #[test]
    fn paint_wraps_in_sgr_only_when_enabled() {
        assert_eq!(paint_if(false, Colour::Red, "error"), "error");
        assert_eq!(
            paint_if(true, Colour::Red, "error"),
            "\x1b[1;31merror\x1b[0m"
        );
        assert_eq!(paint_if(true, Colour::Green, ""), "");
    }
}
