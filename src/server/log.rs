//! The servers' log: one line per event on stderr, with a level. Under systemd (when
//! `JOURNAL_STREAM` is set) each line starts with the `<N>` priority prefix journald reads,
//! so `journalctl -p warning` filters; otherwise `LEVEL cyrkit[pid]: message`, in the
//! spirit of Cyrus's syslog lines so admins can grep the same phrases
//! (`Delivered: <msgid> to mailbox: <name>`, `login: ...`).

use std::io::Write;

struct StderrLog {
    level: ::log::LevelFilter,
    journald: bool,
}

impl ::log::Log for StderrLog {
    fn enabled(&self, metadata: &::log::Metadata) -> bool {
        // rustls reports every odd client hello (an IP address sent as SNI by fetchmail,
        // curl, ...) as a warning: noise in an admin's log. Its errors still show.
        let level = if metadata.target().starts_with("rustls") {
            self.level.min(::log::LevelFilter::Error)
        } else {
            self.level
        };
        metadata.level() <= level
    }

    fn log(&self, record: &::log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = if self.journald {
            let prio = match record.level() {
                ::log::Level::Error => 3,
                ::log::Level::Warn => 4,
                ::log::Level::Info => 6,
                ::log::Level::Debug | log::Level::Trace => 7,
            };
            format!("<{prio}>{}\n", record.args())
        } else {
            format!(
                "{} cyrkit[{}]: {}\n",
                record.level(),
                std::process::id(),
                record.args()
            )
        };
        // One write per line so lines from different sessions do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Install the logger (once per process; later calls only change nothing).
pub fn init(level: ::log::LevelFilter) {
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    if ::log::set_boxed_logger(Box::new(StderrLog { level, journald })).is_ok() {
        ::log::set_max_level(level);
    }
}
