//! Recipient addresses → mailboxes, as Cyrus 3.6 lmtpd reads them
//! (`process_recipient` in `imap/lmtpengine.c`, `mbname_from_recipient` in
//! `imap/mboxname.c`): `local[+detail][@domain]`, the domain kept only with `virtdomains`
//! when it is not `defaultdomain`, the local part (and domain) lower-cased with
//! `lmtp_downcase_rcpt`, the detail converted to IMAP UTF-7 and split on the hierarchy
//! separator into sub-folders, and the `postuser` local part (default: empty) naming a
//! shared folder (`+shared.folder`).

use crate::format::header::Acl;
use crate::spool::names::{MboxName, NameConfig};

/// How addresses are read.
#[derive(Debug, Clone)]
pub struct AddressConfig {
    pub names: NameConfig,
    /// `lmtp_downcase_rcpt` (default on).
    pub downcase: bool,
    /// `postuser` (default empty).
    pub postuser: Vec<u8>,
}

/// Where a recipient's mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A user: `inbox` is checked at RCPT time; `folder` (the `+detail` sub-folder, if
    /// any and if it makes a valid name) is tried first at delivery.
    User {
        userid: Vec<u8>,
        inbox: MboxName,
        folder: Option<MboxName>,
    },
    /// A shared folder: needs the `p` right for the sender.
    Shared { mailbox: MboxName },
}

/// Why an address names no mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// Empty address or a name Cyrus would not find: `550 5.1.1`.
    Unknown,
}

/// Resolve the path of RCPT TO (as written, `<...>`).
pub fn resolve(path: &[u8], cfg: &AddressConfig) -> Result<Target, AddressError> {
    let mut addr = path.strip_prefix(b"<").unwrap_or(path);
    // Skip the at-domain-list (source route).
    if addr.first() == Some(&b'@') {
        let colon = addr
            .iter()
            .position(|&b| b == b':')
            .ok_or(AddressError::Unknown)?;
        addr = addr.get(colon + 1..).unwrap_or_default();
    }
    let addr = addr.strip_suffix(b">").unwrap_or(addr);
    if addr.is_empty() {
        return Err(AddressError::Unknown);
    }
    let (mut local, mut domain) = match addr.iter().rposition(|&b| b == b'@') {
        Some(i) => {
            let d = addr.get(i + 1..).unwrap_or_default().to_vec();
            let keep = cfg.names.virtdomains.enabled() && d != cfg.names.default_domain;
            (
                addr.get(..i).unwrap_or_default().to_vec(),
                keep.then_some(d),
            )
        }
        None => (addr.to_vec(), None),
    };
    let mut boxes: Vec<Vec<u8>> = Vec::new();
    if let Some(plus) = local.iter().position(|&b| b == b'+') {
        let detail = imap_utf7(local.get(plus + 1..).unwrap_or_default());
        local.truncate(plus);
        let sep = if cfg.names.unixhierarchysep {
            b'/'
        } else {
            b'.'
        };
        boxes = detail.split(|&b| b == sep).map(<[u8]>::to_vec).collect();
    }
    if cfg.downcase {
        local.make_ascii_lowercase();
        if let Some(d) = &mut domain {
            d.make_ascii_lowercase();
        }
    }
    if local == cfg.postuser {
        // A shared folder: `+shared.folder` (or `<postuser>+folder`).
        let mut name = Vec::new();
        if let Some(d) = &domain {
            name.extend_from_slice(d);
            name.push(crate::spool::names::DB_DOMAINSEP);
        }
        for (i, b) in boxes.iter().enumerate() {
            if i > 0 {
                name.push(crate::spool::names::DB_HIERSEP);
            }
            name.extend_from_slice(b);
        }
        let mailbox =
            MboxName::from_dbname(&name, &cfg.names).map_err(|_| AddressError::Unknown)?;
        return Ok(Target::Shared { mailbox });
    }
    let mut userid = local;
    if let Some(d) = &domain {
        userid.push(b'@');
        userid.extend_from_slice(d);
    }
    let inbox = MboxName::user_inbox(&userid, &cfg.names).map_err(|_| AddressError::Unknown)?;
    if inbox.userid().as_deref() != Some(userid.as_slice()) {
        // The name parser read something else into it (e.g. a second `@`).
        return Err(AddressError::Unknown);
    }
    // An empty detail (`bob+@x`) is INBOX; a detail that makes no valid name is tried as
    // a folder by Cyrus, fails, and lands in INBOX: the same outcome without the try.
    let folder = if boxes.iter().all(Vec::is_empty) {
        None
    } else {
        boxes
            .iter()
            .try_fold(inbox.clone(), |n, b| n.child(b, &cfg.names))
            .ok()
    };
    Ok(Target::User {
        userid,
        inbox,
        folder,
    })
}

/// A user's INBOX as a target (`mbname_from_userid`; `lmtp_catchall_mailbox`).
pub fn user_target(userid: &[u8], cfg: &AddressConfig) -> Result<Target, AddressError> {
    let inbox = MboxName::user_inbox(userid, &cfg.names).map_err(|_| AddressError::Unknown)?;
    Ok(Target::User {
        userid: userid.to_vec(),
        inbox,
        folder: None,
    })
}

/// UTF-8 → modified UTF-7 of RFC 3501 §5.1.3 (`charset_to_imaputf7`). Invalid UTF-8 is
/// decoded lossily first.
pub fn imap_utf7(s: &[u8]) -> Vec<u8> {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
    let text = String::from_utf8_lossy(s);
    let mut out = Vec::with_capacity(s.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut Vec<u8>| {
        if pending.is_empty() {
            return;
        }
        out.push(b'&');
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk.first().copied().unwrap_or(0),
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            let chars = chunk.len() + 1;
            for i in 0..chars {
                let idx = (n >> (18 - 6 * i)) & 63;
                out.push(B64[idx as usize]);
            }
        }
        out.push(b'-');
        pending.clear();
    };
    for c in text.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.extend_from_slice(b"&-");
            } else {
                out.push(c as u8);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// ACL rights bits that matter for delivery (`imap/acl.h`).
pub const ACL_LOOKUP: u32 = 1 << 0;
pub const ACL_POST: u32 = 1 << 4;

/// `cyrus_acl_myrights` for LMTP's identities (`auth_unix`): `anyone` always matches,
/// the identity itself matches (`anonymous` when MAIL gave no `AUTH=`); `-id` entries
/// take rights away. Only `l` and `p` are computed.
pub fn rights(acl: &Acl, identity: &[u8]) -> u32 {
    let (mut plus, mut minus) = (0, 0);
    for e in &acl.entries {
        let (negative, id) = match e.identifier.strip_prefix(b"-") {
            Some(id) => (true, id),
            None => (false, e.identifier.as_slice()),
        };
        if id != b"anyone" && id != identity {
            continue;
        }
        let mut mask = 0;
        for &r in &e.rights {
            match r {
                b'l' => mask |= ACL_LOOKUP,
                b'p' => mask |= ACL_POST,
                _ => {}
            }
        }
        if negative {
            minus |= mask;
        } else {
            plus |= mask;
        }
    }
    plus & !minus
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::header::AclEntry;
    use crate::spool::config::VirtDomains;

    fn cfg() -> AddressConfig {
        AddressConfig {
            names: NameConfig::default(),
            downcase: true,
            postuser: Vec::new(),
        }
    }

    fn internal(t: &Target) -> (String, Option<String>) {
        match t {
            Target::User { inbox, folder, .. } => {
                (inbox.to_string(), folder.as_ref().map(|f| f.to_string()))
            }
            Target::Shared { mailbox } => (mailbox.to_string(), None),
        }
    }

    #[test]
    fn users_details_and_shared_folders() {
        let c = cfg();
        let r = |s: &str| resolve(s.as_bytes(), &c).map(|t| internal(&t));
        assert_eq!(r("<Bob@Example.COM>"), Ok(("user.bob".into(), None)));
        assert_eq!(
            r("<bob+Lists/Rust@x>"),
            Ok(("user.bob".into(), Some("user.bob.Lists.Rust".into())))
        );
        assert_eq!(
            r("<bob+a.b@x>"),
            Ok(("user.bob".into(), Some("user.bob.a^b".into())))
        );
        assert_eq!(r("<bob+@x>"), Ok(("user.bob".into(), None)));
        // A detail that makes no valid name never names a folder: INBOX.
        assert_eq!(r("<bob+a//b@x>"), Ok(("user.bob".into(), None)));
        // `..` is a real component (`^^` on disk), never a path step.
        assert_eq!(
            r("<bob+../x@x>"),
            Ok(("user.bob".into(), Some("user.bob.^^.x".into())))
        );
        assert_eq!(r("<+shared/folder@x>"), Ok(("shared.folder".into(), None)));
        assert_eq!(r("<@relay.example:bob@x>"), Ok(("user.bob".into(), None)));
        assert_eq!(r("<>"), Err(AddressError::Unknown));
        assert_eq!(r("<+@x>"), Err(AddressError::Unknown));
        assert_eq!(r("<a/b@x>"), Err(AddressError::Unknown));
        assert_eq!(r("<+a//b@x>"), Err(AddressError::Unknown));
    }

    #[test]
    fn virtual_domains_and_postuser() {
        let mut c = cfg();
        c.names.virtdomains = VirtDomains::On;
        c.names.default_domain = b"example.com".to_vec();
        c.postuser = b"shared".to_vec();
        let r = |s: &str| resolve(s.as_bytes(), &c).map(|t| internal(&t));
        assert_eq!(
            r("<bob@Other.ORG>"),
            Ok(("other.org!user.bob".into(), None))
        );
        assert_eq!(r("<bob@example.com>"), Ok(("user.bob".into(), None)));
        assert_eq!(
            r("<shared+news@other.org>"),
            Ok(("other.org!news".into(), None))
        );
        let mut c2 = cfg();
        c2.downcase = false;
        assert_eq!(internal(&resolve(b"<Bob>", &c2).unwrap()).0, "user.Bob");
    }

    #[test]
    fn utf7_detail() {
        assert_eq!(imap_utf7("Entwürfe".as_bytes()), b"Entw&APw-rfe");
        assert_eq!(imap_utf7(b"a&b"), b"a&-b");
        assert_eq!(imap_utf7("日本語".as_bytes()), b"&ZeVnLIqe-");
    }

    #[test]
    fn acl_rights() {
        let acl = Acl {
            entries: vec![
                AclEntry {
                    identifier: b"anyone".to_vec(),
                    rights: b"lp".to_vec(),
                },
                AclEntry {
                    identifier: b"-spammer".to_vec(),
                    rights: b"p".to_vec(),
                },
            ],
        };
        assert_eq!(rights(&acl, b"anonymous"), ACL_LOOKUP | ACL_POST);
        assert_eq!(rights(&acl, b"spammer"), ACL_LOOKUP);
        assert_eq!(rights(&Acl::default(), b"anonymous"), 0);
    }
}
