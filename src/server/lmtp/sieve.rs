//! Finding a user's active Sieve script the way Cyrus 3.6 lmtpd does before delivery
//! (`sieve_find_script` in `imap/lmtp_sieve.c`, `user_sieve_path` in `imap/user.c`,
//! `sievedir_get_active` in `imap/sievedir.c`). cyrkit runs no Sieve interpreter: the
//! session refuses such a recipient (or, when told to, delivers to the INBOX and warns).

use std::path::{Path, PathBuf};

use crate::spool::paths::dir_hash_c;

/// `DEFAULTBC_NAME`: the symlink naming the active script's bytecode.
pub const DEFAULTBC_NAME: &str = "defaultbc";
/// `BYTECODE_SUFFIX`.
const BYTECODE_SUFFIX: &str = ".bc";

/// Where a user's scripts live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SieveSettings {
    /// `sievedir` (Cyrus's default `/usr/sieve`).
    pub sievedir: PathBuf,
    /// `sieveusehomedir`: the script is `~user/.sieve`.
    pub usehomedir: bool,
    /// `virtdomains` is on.
    pub virtdomains: bool,
    /// `fulldirhash`.
    pub fulldirhash: bool,
}

/// The owner's INBOX as mailboxes.db has it.
#[derive(Debug, Clone, Copy)]
pub struct Inbox<'a> {
    pub localpart: &'a [u8],
    pub domain: Option<&'a [u8]>,
    /// The `l` (legacy directories) flag: scripts stored by name, else by uniqueid.
    pub legacy_dirs: bool,
    pub uniqueid: &'a [u8],
}

/// `user_sieve_path`: the user's script directory. `None` when the names do not make a
/// path (an empty uniqueid, a `/` in a name).
pub fn user_sieve_dir(s: &SieveSettings, inbox: &Inbox<'_>) -> Option<PathBuf> {
    let text = |b: &[u8]| -> Option<String> {
        let t = std::str::from_utf8(b).ok()?;
        (!t.is_empty() && !t.contains('/') && t != "." && t != "..").then(|| t.to_string())
    };
    if !inbox.legacy_dirs {
        // `user_sieve_path_byid` → `mboxname_id_hash`: `uuid/<c0>/<c1>/<uniqueid>`.
        let id = text(inbox.uniqueid)?;
        let mut chars = id.chars();
        let (a, b) = (chars.next()?, chars.next()?);
        return Some(
            s.sievedir
                .join("uuid")
                .join(a.to_string())
                .join(b.to_string())
                .join(&id),
        );
    }
    // `user_sieve_path_byname`; the userid's `^` are dots again.
    let mut dir = s.sievedir.clone();
    let domain = inbox.domain.filter(|_| s.virtdomains);
    if let Some(d) = domain {
        let hash = char::from(dir_hash_c(d, s.fulldirhash)).to_string();
        dir = dir.join("domain").join(hash).join(text(d)?);
    }
    let mut userid: Vec<u8> = inbox.localpart.to_vec();
    if !s.virtdomains {
        if let Some(d) = inbox.domain {
            userid.push(b'@');
            userid.extend_from_slice(d);
        }
    }
    for b in &mut userid {
        if *b == b'^' {
            *b = b'.';
        }
    }
    let hash = char::from(dir_hash_c(&userid, s.fulldirhash)).to_string();
    Some(dir.join(hash).join(text(&userid)?))
}

/// `sievedir_get_active`: the active script's name (the `defaultbc` link's target without
/// `.bc`), if there is one.
pub fn active_script(dir: &Path) -> Option<String> {
    let target = std::fs::read_link(dir.join(DEFAULTBC_NAME)).ok()?;
    let target = target.to_string_lossy();
    // Cyrus takes any target longer than the suffix and cuts three bytes off.
    (target.len() > BYTECODE_SUFFIX.len()).then(|| {
        target
            .strip_suffix(BYTECODE_SUFFIX)
            .unwrap_or(&target)
            .to_string()
    })
}

/// The script that Cyrus's lmtpd would run for the owner of `inbox`, as a path for the
/// log; `None` if there is none.
pub fn find_script(s: &SieveSettings, inbox: &Inbox<'_>) -> Option<PathBuf> {
    if s.usehomedir {
        // `~user/.sieve`, by the local part (Cyrus: `getpwnam(localpart)`).
        let name = std::str::from_utf8(inbox.localpart).ok()?;
        let user = nix::unistd::User::from_name(name).ok()??;
        let script = user.dir.join(".sieve");
        return script.exists().then_some(script);
    }
    let dir = user_sieve_dir(s, inbox)?;
    let name = active_script(&dir)?;
    Some(dir.join(format!("{name}{BYTECODE_SUFFIX}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(virtdomains: bool) -> SieveSettings {
        SieveSettings {
            sievedir: "/var/spool/sieve".into(),
            usehomedir: false,
            virtdomains,
            fulldirhash: false,
        }
    }

    fn inbox<'a>(local: &'a [u8], domain: Option<&'a [u8]>, legacy: bool) -> Inbox<'a> {
        Inbox {
            localpart: local,
            domain,
            legacy_dirs: legacy,
            uniqueid: b"4d1b9a0e-5c0b-4c3e-9a1f-0123456789ab",
        }
    }

    #[test]
    fn script_directories_as_cyrus_names_them() {
        let s = settings(false);
        let d = |i| user_sieve_dir(&s, &i).map(|p| p.display().to_string());
        assert_eq!(
            d(inbox(b"bob", None, true)),
            Some("/var/spool/sieve/b/bob".into())
        );
        assert_eq!(
            d(inbox(b"john^doe", None, true)),
            Some("/var/spool/sieve/j/john.doe".into())
        );
        assert_eq!(
            d(inbox(b"9lives", None, true)),
            Some("/var/spool/sieve/q/9lives".into())
        );
        assert_eq!(
            d(inbox(b"bob", None, false)),
            Some("/var/spool/sieve/uuid/4/d/4d1b9a0e-5c0b-4c3e-9a1f-0123456789ab".into())
        );
        let v = settings(true);
        assert_eq!(
            user_sieve_dir(&v, &inbox(b"bob", Some(b"example.com"), true))
                .unwrap()
                .display()
                .to_string(),
            "/var/spool/sieve/domain/e/example.com/b/bob"
        );
        assert_eq!(d(inbox(b"a/b", None, true)), None);
        let mut empty = inbox(b"bob", None, false);
        empty.uniqueid = b"";
        assert_eq!(d(empty), None);
    }

    #[test]
    fn active_script_is_the_defaultbc_link() {
        let t = tempfile::tempdir().unwrap();
        let s = SieveSettings {
            sievedir: t.path().to_path_buf(),
            ..settings(false)
        };
        let i = inbox(b"bob", None, true);
        let dir = user_sieve_dir(&s, &i).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(find_script(&s, &i), None, "no link, no script");
        std::fs::write(dir.join("vacation.script"), "keep;").unwrap();
        std::fs::write(dir.join("vacation.bc"), "").unwrap();
        assert_eq!(find_script(&s, &i), None, "a script that is not active");
        std::os::unix::fs::symlink("vacation.bc", dir.join(DEFAULTBC_NAME)).unwrap();
        assert_eq!(active_script(&dir).as_deref(), Some("vacation"));
        assert_eq!(find_script(&s, &i), Some(dir.join("vacation.bc")));
        std::fs::remove_file(dir.join(DEFAULTBC_NAME)).unwrap();
        std::os::unix::fs::symlink(".bc", dir.join(DEFAULTBC_NAME)).unwrap();
        assert_eq!(find_script(&s, &i), None, "too short a target");
    }
}
