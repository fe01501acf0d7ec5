//! The line after an error that tells the admin what to run next.
//!
//! A typed error already names the file and what is wrong with it; what it cannot know is the
//! command line the admin typed (`-C FILE`), so the repair command is composed here, at the
//! command edge, from the error's type and the configuration file in use. `main` prints it as
//! `cyrkit: fix: ...` after `cyrkit: error: ...`.

use std::io::ErrorKind;
use std::path::Path;

use crate::spool::config::ConfigError;
use crate::spool::db::SpoolDbError;
use crate::spool::lock::{LockError, LOCK_TIMEOUT_ENV};

/// What to run (or change) to get past `e`, when cyrkit knows; `config` is the `-C` file.
pub fn fix_for_error(e: &anyhow::Error, config: &Path) -> Option<String> {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<ConfigError>() {
            return Some(match c {
                ConfigError::Io { source, .. } if source.kind() == ErrorKind::NotFound => {
                    "name the imapd.conf your Cyrus uses with `-C FILE` (the default is \
                     /etc/imapd.conf; Cyrus's own tools take the same flag)"
                        .to_string()
                }
                ConfigError::Io { source, .. } if source.kind() == ErrorKind::PermissionDenied => {
                    not_permitted()
                }
                _ => {
                    "correct the line named above (the file is read as Cyrus reads it)".to_string()
                }
            });
        }
        if let Some(fix) = cause
            .downcast_ref::<SpoolDbError>()
            .and_then(|d| db_fix(d, config))
        {
            return Some(fix);
        }
        if let Some(LockError::Timeout { path, .. }) = cause.downcast_ref::<LockError>() {
            let who = if path.is_absolute() {
                format!("`fuser -v {}` or `lslocks`", path.display())
            } else {
                "`lslocks`".to_string()
            };
            return Some(format!(
                "another process (a busy Cyrus, or another cyrkit) holds the lock; find it with \
                 {who} and run the command again when it has finished (`{LOCK_TIMEOUT_ENV}=SECONDS` \
                 caps how long cyrkit waits)"
            ));
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == ErrorKind::PermissionDenied {
                return Some(not_permitted());
            }
        }
    }
    None
}

fn not_permitted() -> String {
    "run cyrkit as root or as the user Cyrus runs as (`runuser -u cyrus -- cyrkit ...`)".into()
}

fn db_fix(d: &SpoolDbError, config: &Path) -> Option<String> {
    let conf = config.display();
    let (path, permission) = match d {
        SpoolDbError::Io { path, source } => (path, source.kind() == ErrorKind::PermissionDenied),
        SpoolDbError::Corrupt { path, .. } => (path, false),
        // The conversion messages name Cyrus's tool themselves; a lock error is a cause below.
        _ => return None,
    };
    if permission {
        return Some(not_permitted());
    }
    let is_mboxlist = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("mailboxes"));
    if !is_mboxlist {
        return None;
    }
    Some(format!(
        "`cyrkit reconstruct -m -n -C {conf}` shows what a rebuild from the mailbox directories \
         would write; `cyrkit reconstruct -m -C {conf}` writes it (a damaged file is kept as \
         {}.<timestamp>)",
        path.display()
    ))
}

/// The two lines for a mailbox argument that names no mailbox: what is wrong and the fix.
pub fn mailbox_not_found(name: &str, mboxlist: &Path, config: &Path) -> String {
    let conf = config.display();
    let parent = name
        .rfind(['.', '/'])
        .map(|i| &name[..i])
        .filter(|p| !p.is_empty());
    let adopt = match parent {
        Some(p) => format!("`cyrkit reconstruct -r -f -C {conf} {p}` adopts it"),
        None => format!("`cyrkit reconstruct -m -C {conf}` adds it"),
    };
    format!(
        "{}mailbox {name} does not exist in {}\n\
         {}check the name (names are external, as Cyrus's tools take them); if its \
         directory is on disk, `cyrkit reconstruct -m -n -C {conf}` lists it and {adopt}",
        crate::ui::error_prefix(),
        mboxlist.display(),
        crate::ui::fix_prefix(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    #[test]
    fn lock_timeout_names_the_lock_file() {
        let e = anyhow::Error::from(LockError::Timeout {
            path: PathBuf::from("/var/lib/cyrus/mailboxes.db"),
            waited: Duration::from_secs(60),
        });
        let fix = fix_for_error(&e, Path::new("/etc/imapd.conf")).unwrap();
        assert!(
            fix.contains("fuser -v /var/lib/cyrus/mailboxes.db"),
            "{fix}"
        );
    }

    #[test]
    fn damaged_mailboxes_db_points_at_reconstruct_m() {
        let e = anyhow::Error::from(SpoolDbError::Io {
            path: PathBuf::from("/var/lib/cyrus/mailboxes.db"),
            source: std::io::Error::from(ErrorKind::InvalidData),
        });
        let fix = fix_for_error(&e, Path::new("/etc/cyrus.conf")).unwrap();
        assert!(
            fix.contains("cyrkit reconstruct -m -C /etc/cyrus.conf"),
            "{fix}"
        );
        let other = anyhow::Error::from(SpoolDbError::Io {
            path: PathBuf::from("/var/lib/cyrus/quotas.db"),
            source: std::io::Error::from(ErrorKind::InvalidData),
        });
        assert_eq!(fix_for_error(&other, Path::new("/etc/imapd.conf")), None);
    }

    #[test]
    fn unknown_mailbox_suggests_adopting_under_its_parent() {
        let m = mailbox_not_found("user.nobody", Path::new("/c/mailboxes.db"), Path::new("/i"));
        assert!(m.contains("does not exist in /c/mailboxes.db"), "{m}");
        assert!(
            m.contains("`cyrkit reconstruct -r -f -C /i user` adopts it"),
            "{m}"
        );
        let top = mailbox_not_found("shared", Path::new("/c/mailboxes.db"), Path::new("/i"));
        assert!(
            top.contains("`cyrkit reconstruct -m -C /i` adds it"),
            "{top}"
        );
    }
}
