//! The real maildrop: a user's INBOX (or `+folder`) in the Cyrus spool, opened as Cyrus 3.6
//! pop3d's `openinbox` opens it.
//!
//! At login: `*U*user` namelock (exclusive), mailbox namelock (shared), `cyrus.index` write
//! lock; a header left stale by a killed commit is repaired
//! ([`repair_torn_commit`](crate::spool::append::repair_torn_commit)); the message list is read (UID order, not expunged, with `popuseimapflags` not
//! `\Deleted`, internaldate after `pop3_show_after`, at most `exists` entries) and
//! `popminpoll` checked; then the index and `*U*` locks are released and only the shared
//! mailbox namelock is kept for the session (it blocks DELETE/RENAME, not delivery or IMAP).
//!
//! At QUIT ([`SpoolMaildrop::commit`]): the mailbox is locked again for writing, DELE'd
//! messages get `\Deleted` + EXPUNGED, retrieved ones `\Seen` (popuseimapflags),
//! `pop3_last_login` is updated, and the change is committed (quota usage lowered).

use std::fs::File;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use super::login::RECENT_WINDOW_SECS;
use super::userdeny::UserDeny;
use super::{LoginTarget, Maildrop, MaildropStore, MessageInfo, OpenError, Pop3Config, Update};
use crate::format::index::{
    self, Index, IndexRecord, FLAG_DELETED, FLAG_INTERNAL_EXPUNGED, FLAG_SEEN, OPT_POP3_NEW_UIDL,
};
use crate::spool::append::{repair_torn_commit, AppendError, MailboxWriter, SpoolContext};
use crate::spool::config::Config;
use crate::spool::lock::{self, FileLock, LockMode};
use crate::spool::mailbox::{self, MailboxFiles};
use crate::spool::mboxlist::MboxRecord;
use crate::spool::names::{MboxName, NameConfig};
use crate::spool::paths::Layout;

/// How long a login waits for Cyrus's locks.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Cyrus error texts (`imap/imap_err.et`).
const ERR_NONEXISTENT: &str = "Mailbox does not exist";
const ERR_PERMISSION: &str = "Permission denied";
const ERR_MOVED: &str = "Mailbox has been moved to another server";
const ERR_BADFORMAT: &str = "Mailbox has an invalid format";
const ERR_LOCKED: &str = "Mailbox is locked";
const ERR_IO: &str = "System I/O error";

/// Opens maildrops in the spool named by imapd.conf.
pub struct SpoolStore {
    cfg: Arc<Pop3Config>,
    names: NameConfig,
    layout: Layout,
    deny: UserDeny,
    ctx: Arc<SpoolContext>,
}

impl SpoolStore {
    pub fn new(config: Arc<Config>, cfg: Arc<Pop3Config>) -> Result<SpoolStore, String> {
        let names = NameConfig::from_config(&config).map_err(|e| e.to_string())?;
        let layout = Layout::from_config(&config).map_err(|e| e.to_string())?;
        let deny = UserDeny::from_config(&config);
        let ctx = Arc::new(SpoolContext::open(config.clone()).map_err(|e| e.to_string())?);
        Ok(SpoolStore {
            ctx,
            cfg,
            names,
            layout,
            deny,
        })
    }

    /// The mailbox a login names: the user's INBOX or its `folder` child.
    fn mailbox_name(&self, t: &LoginTarget) -> Result<MboxName, OpenError> {
        let bad = |_| OpenError::Temp(ERR_NONEXISTENT.into());
        let mut name = MboxName::user_inbox(t.userid.as_bytes(), &self.names).map_err(bad)?;
        if let Some(folder) = &t.subfolder {
            let sep = if self.cfg.dot_separator { '.' } else { '/' };
            for comp in folder.split(sep) {
                name = name.child(comp.as_bytes(), &self.names).map_err(bad)?;
            }
        }
        Ok(name)
    }

    /// A fresh lookup in mailboxes.db.
    fn lookup(&self, internal: &[u8]) -> Result<Option<MboxRecord>, OpenError> {
        self.ctx.lookup(internal).map_err(|e| {
            log::error!("IOERROR: mailboxes.db: {e}");
            OpenError::Temp(ERR_IO.into())
        })
    }
}

/// The rights of `userid` in `acl` (identifier entries for the user and `anyone`;
/// `-`-prefixed negative entries remove rights), as `cyrus_acl_myrights` computes them for a
/// non-admin.
pub fn my_rights(acl: &crate::format::header::Acl, userid: &str) -> Vec<u8> {
    let mut have: Vec<u8> = Vec::new();
    let mut minus: Vec<u8> = Vec::new();
    for e in &acl.entries {
        let (neg, id) = match e.identifier.strip_prefix(b"-") {
            Some(id) => (true, id),
            None => (false, e.identifier.as_slice()),
        };
        if id == userid.as_bytes() || id == b"anyone" {
            if neg {
                minus.extend_from_slice(&e.rights);
            } else {
                have.extend_from_slice(&e.rights);
            }
        }
    }
    have.retain(|r| !minus.contains(r));
    have.sort_unstable();
    have.dedup();
    have
}

impl MaildropStore for SpoolStore {
    fn open(&self, t: &LoginTarget, login_time: i64) -> Result<Box<dyn Maildrop>, OpenError> {
        let name = self.mailbox_name(t)?;
        let internal = name.to_internal();
        let rec = self
            .lookup(&internal)?
            .filter(|m| !m.entry.is_tombstone())
            .ok_or_else(|| OpenError::Temp(ERR_NONEXISTENT.into()))?;
        if rec.entry.mbtype.remote {
            return Err(OpenError::Temp(ERR_MOVED.into()));
        }
        let rights = rec
            .entry
            .acl
            .as_ref()
            .map(|a| my_rights(a, &t.userid))
            .unwrap_or_default();
        if self.cfg.popuseacl && !rights.contains(&b'r') {
            let msg = if rights.contains(&b'l') {
                ERR_PERMISSION
            } else {
                ERR_NONEXISTENT
            };
            return Err(OpenError::Temp(msg.into()));
        }
        let files = MailboxFiles::locate(&self.layout, &rec).map_err(|e| {
            log::error!(
                "IOERROR: {internal:?}: {e}",
                internal = String::from_utf8_lossy(&internal)
            );
            OpenError::Perm(ERR_BADFORMAT.into())
        })?;
        let dir =
            mailbox::mailbox_dir(&rec).ok_or_else(|| OpenError::Perm(ERR_BADFORMAT.into()))?;
        let perm = |what: &str, e: &dyn std::fmt::Display| {
            log::error!("IOERROR: opening {}: {what}: {e}", name);
            OpenError::Perm(ERR_LOCKED.into())
        };
        // mailbox_open_iwl: *U* exclusive, name lock shared, cyrus.index exclusive.
        let ns_path = self
            .layout
            .user_namespace_lock_file(name.userid().as_deref())
            .map_err(|e| perm("lock path", &e))?;
        let ns = lock::lock_path(&ns_path, LockMode::Exclusive, LOCK_TIMEOUT)
            .map_err(|e| perm("user lock", &e))?;
        let name_path = self
            .layout
            .mailbox_lock_file(dir)
            .map_err(|e| perm("lock path", &e))?;
        let name_lock = lock::lock_path(&name_path, LockMode::Shared, LOCK_TIMEOUT)
            .map_err(|e| perm("name lock", &e))?;
        let index_lock = lock::lock_existing(&files.index, LockMode::Exclusive, LOCK_TIMEOUT)
            .map_err(|e| match e {
                lock::LockError::Open { .. } => OpenError::Perm(ERR_NONEXISTENT.into()),
                e => perm("index lock", &e),
            })?;
        let mut buf = {
            let mut b = Vec::new();
            index_lock
                .file()
                .read_to_end(&mut b)
                .map_err(|e| perm("reading cyrus.index", &e))?;
            b
        };
        // A commit killed between its records and its header (see spool::append): repaired
        // here, under the same locks a QUIT takes, so that even a session that never QUITs
        // leaves the mailbox consistent. The listing reads the records, which are right
        // either way; a failed repair is logged and left to the next open.
        match repair_torn_commit(&self.ctx, &internal, &files, index_lock.file(), &buf) {
            Ok(Some(r)) => {
                if let Ok(h) = index::write_header(&r.new, r.new.minor_version) {
                    if let Some(head) = buf.get_mut(..h.len()) {
                        head.copy_from_slice(&h);
                    }
                }
            }
            Ok(None) => {}
            Err(e) => log::error!("IOERROR: {name}: repairing cyrus.index: {e}"),
        }
        let listing = scan_index(&buf, &self.cfg, t.recent, login_time).map_err(|e| {
            log::error!("IOERROR: {}: cyrus.index: {e}", files.index.display());
            e
        })?;
        // Released together, as mailbox_unlock_index releases the *U* lock with the index.
        drop(index_lock);
        drop(ns);
        Ok(Box::new(SpoolMaildrop {
            internal,
            rights,
            files,
            listing,
            cfg: self.cfg.clone(),
            ctx: self.ctx.clone(),
            _name_lock: name_lock,
        }))
    }

    fn user_denied(&self, userid: &str, service: &str) -> Option<String> {
        self.deny.check(userid, service)
    }
}

/// What the login scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub messages: Vec<MessageInfo>,
    pub uidvalidity: u32,
    pub new_uidl: bool,
}

/// The login scan over a locked `cyrus.index` (`openinbox` in pop3d.c).
pub fn scan_index(
    buf: &[u8],
    cfg: &Pop3Config,
    recent: bool,
    login_time: i64,
) -> Result<Listing, OpenError> {
    let idx = Index::open(buf).map_err(|_| OpenError::Perm(ERR_BADFORMAT.into()))?;
    let h = idx.header();
    let version = idx.version();
    let secs = |raw: u64| i64::try_from(index::time_secs(raw, version)).unwrap_or(i64::MAX);
    if cfg.popminpoll > 0 && secs(h.pop3_last_login).saturating_add(cfg.popminpoll) > login_time {
        return Err(OpenError::LoginDelay(cfg.popminpoll));
    }
    let show_after = if recent { 0 } else { secs(h.pop3_show_after) };
    let since = login_time.saturating_sub(RECENT_WINDOW_SECS);
    let cap = h.exists as usize;
    let mut messages = Vec::with_capacity(cap.min(1 << 20));
    for (recno, r) in (0u32..).zip(idx.records()) {
        if messages.len() >= cap {
            break;
        }
        let r = r.map_err(|_| OpenError::Perm(ERR_BADFORMAT.into()))?;
        if r.is_expunged() || (cfg.popuseimapflags && r.system_flags & FLAG_DELETED != 0) {
            continue;
        }
        let date = secs(r.internaldate);
        if show_after != 0 && date <= show_after {
            continue;
        }
        if recent && date < since {
            continue;
        }
        messages.push(MessageInfo {
            uid: r.uid,
            size: r.size,
            recno,
        });
    }
    Ok(Listing {
        messages,
        uidvalidity: h.uidvalidity,
        new_uidl: h.options & OPT_POP3_NEW_UIDL != 0,
    })
}

/// `pop3_last_login` at QUIT (pop3d.c `cmdloop`, "quit"): the login time, or with
/// `poppollpadding` > 1 a slot queue advanced by `popminpoll`.
pub fn next_last_login(old: i64, login_time: i64, minpoll: i64, padding: i64) -> i64 {
    if minpoll > 0 && padding > 1 {
        let mintime = login_time.saturating_sub(minpoll.saturating_mul(padding));
        if old < mintime {
            mintime.saturating_add(minpoll)
        } else {
            old.saturating_add(minpoll)
        }
    } else {
        login_time
    }
}

/// The record of `uid`: at `recno` when the index was not repacked since login, else found
/// by UID (records are in UID order).
fn find_record(w: &MailboxWriter, recno: u32, uid: u32) -> Result<Option<u32>, AppendError> {
    if recno < w.num_records() && w.record(recno)?.uid == uid {
        return Ok(Some(recno));
    }
    let (mut lo, mut hi) = (0u32, w.num_records());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let r = w.record(mid)?.uid;
        match r.cmp(&uid) {
            std::cmp::Ordering::Equal => return Ok(Some(mid)),
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
        }
    }
    Ok(None)
}

/// QUIT (`cmdloop` "quit", `expunge_deleted`, `update_seen`): under the index write lock,
/// set `pop3_last_login`, expunge the DELE'd messages, `\Seen` the retrieved ones, commit.
pub fn apply_update(
    ctx: &SpoolContext,
    internal: &[u8],
    cfg: &Pop3Config,
    update: &Update,
) -> Result<(), AppendError> {
    let mut w = MailboxWriter::open(ctx, internal)?;
    let version = w.version();
    let to_raw = |secs: i64| {
        let s = u64::try_from(secs).unwrap_or(0);
        if version >= 20 {
            s.saturating_mul(1_000_000_000)
        } else {
            s
        }
    };
    let old = i64::try_from(index::time_secs(w.header().pop3_last_login, version)).unwrap_or(0);
    let last = next_last_login(old, update.login_time, cfg.popminpoll, cfg.poppollpadding);
    w.header_mut().pop3_last_login = to_raw(last);
    for &(recno, uid) in &update.expunge {
        let Some(recno) = find_record(&w, recno, uid)? else {
            continue;
        };
        if w.record(recno)?.is_expunged() {
            continue;
        }
        w.update_record(recno, &mut |r: &mut IndexRecord| {
            r.system_flags |= FLAG_DELETED;
            r.internal_flags |= FLAG_INTERNAL_EXPUNGED;
        })?;
    }
    for &(recno, uid) in &update.seen {
        let Some(recno) = find_record(&w, recno, uid)? else {
            continue;
        };
        let r = w.record(recno)?;
        if r.is_expunged() || r.system_flags & FLAG_SEEN != 0 {
            continue;
        }
        w.update_record(recno, &mut |r: &mut IndexRecord| {
            r.system_flags |= FLAG_SEEN
        })?;
    }
    w.commit()
}

/// A user's mailbox opened by a POP3 login.
pub struct SpoolMaildrop {
    internal: Vec<u8>,
    rights: Vec<u8>,
    files: MailboxFiles,
    listing: Listing,
    cfg: Arc<Pop3Config>,
    ctx: Arc<SpoolContext>,
    /// The shared mailbox namelock, held until the session ends.
    _name_lock: FileLock,
}

impl Maildrop for SpoolMaildrop {
    fn messages(&self) -> &[MessageInfo] {
        &self.listing.messages
    }
    fn uidvalidity(&self) -> u32 {
        self.listing.uidvalidity
    }
    fn new_uidl(&self) -> bool {
        self.listing.new_uidl
    }
    fn may(&self, right: u8) -> bool {
        self.rights.contains(&right)
    }
    fn open_message(&mut self, i: usize) -> std::io::Result<Box<dyn Read + Send>> {
        let m = self
            .listing
            .messages
            .get(i)
            .ok_or(std::io::ErrorKind::NotFound)?;
        Ok(Box::new(File::open(self.files.message(m.uid))?))
    }
    fn commit(self: Box<Self>, update: &Update) -> Result<(), String> {
        apply_update(&self.ctx, &self.internal, &self.cfg, update).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::header::{Acl, AclEntry};
    use crate::format::index::{write_index, IndexHeader, IndexRecord, FLAG_INTERNAL_EXPUNGED};

    fn index_bytes(options: u32, show_after: u64, last_login: u64) -> Vec<u8> {
        let rec = |uid: u32, date: u64, sys: u32, internal: u32| IndexRecord {
            uid,
            internaldate: date,
            size: 100 + u64::from(uid),
            system_flags: sys,
            internal_flags: internal,
            ..Default::default()
        };
        let records = vec![
            rec(1, 1000, 0, 0),
            rec(2, 2000, 0, FLAG_INTERNAL_EXPUNGED),
            rec(3, 3000, FLAG_DELETED, 0),
            rec(5, 5000, 0, 0),
        ];
        let h = IndexHeader {
            minor_version: 17,
            uidvalidity: 77,
            options,
            exists: 3,
            last_uid: 5,
            pop3_show_after: show_after,
            pop3_last_login: last_login,
            num_records: 4,
            ..Default::default()
        };
        write_index(&h, &records, 17).unwrap()
    }

    #[test]
    fn login_scan_as_openinbox() {
        let cfg = Pop3Config::default();
        let l = scan_index(&index_bytes(OPT_POP3_NEW_UIDL, 0, 0), &cfg, false, 10_000).unwrap();
        let uids: Vec<u32> = l.messages.iter().map(|m| m.uid).collect();
        assert_eq!(uids, vec![1, 3, 5]);
        assert_eq!(l.messages[2].recno, 3);
        assert_eq!(l.messages[2].size, 105);
        assert!(l.new_uidl);
        assert_eq!(l.uidvalidity, 77);

        let mut flags = cfg.clone();
        flags.popuseimapflags = true;
        let l = scan_index(&index_bytes(0, 1000, 0), &flags, false, 10_000).unwrap();
        let uids: Vec<u32> = l.messages.iter().map(|m| m.uid).collect();
        assert_eq!(
            uids,
            vec![5],
            "\\Deleted hidden, show_after excludes date 1000"
        );
        assert!(!l.new_uidl);

        // Recent mode ignores show_after and takes the last 30 days.
        let now = 5000 + RECENT_WINDOW_SECS;
        let l = scan_index(&index_bytes(0, 4000, 0), &cfg, true, now).unwrap();
        let uids: Vec<u32> = l.messages.iter().map(|m| m.uid).collect();
        assert_eq!(uids, vec![5]);
        let l = scan_index(&index_bytes(0, 4000, 0), &cfg, true, 3000).unwrap();
        assert_eq!(l.messages.len(), 3);
    }

    #[test]
    fn popminpoll_and_padding() {
        let cfg = Pop3Config {
            popminpoll: 600,
            ..Pop3Config::default()
        };
        let r = scan_index(&index_bytes(0, 0, 9_500), &cfg, false, 10_000);
        assert!(matches!(r, Err(OpenError::LoginDelay(600))));
        assert!(scan_index(&index_bytes(0, 0, 9_400), &cfg, false, 10_000).is_ok());
        assert_eq!(next_last_login(5, 10_000, 0, 1), 10_000);
        assert_eq!(next_last_login(5, 10_000, 600, 3), 10_000 - 1800 + 600);
        assert_eq!(next_last_login(9_000, 10_000, 600, 3), 9_600);
        assert!(matches!(
            scan_index(b"junk", &cfg, false, 0),
            Err(OpenError::Perm(_))
        ));
    }

    #[test]
    fn rights() {
        let acl = Acl {
            entries: vec![
                AclEntry {
                    identifier: b"alice".to_vec(),
                    rights: b"lrswipkxtecdan".to_vec(),
                },
                AclEntry {
                    identifier: b"anyone".to_vec(),
                    rights: b"p".to_vec(),
                },
                AclEntry {
                    identifier: b"-alice".to_vec(),
                    rights: b"t".to_vec(),
                },
            ],
        };
        let r = my_rights(&acl, "alice");
        assert!(r.contains(&b'r') && r.contains(&b'p') && !r.contains(&b't'));
        assert_eq!(my_rights(&acl, "bob"), b"p");
    }
}
