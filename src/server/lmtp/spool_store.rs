//! [`Mailstore`] over the real spool ([`crate::spool::append`]): RCPT-time checks as
//! `verify_user`, delivery as `deliver_local` + `deliver_mailbox` (`imap/lmtpd.c`).

use std::path::PathBuf;
use std::sync::Arc;

use super::address::{self, Target};
use super::sieve::{self, Inbox, SieveSettings};
use super::store::{Delivered, DeliveryError, Mailstore, Rcpt, Staged};
use crate::spool::append::{AppendError, MailboxWriter, SpoolContext, StagedMessage};
use crate::spool::config::Config;
use crate::spool::deliver_db;
use crate::spool::mboxlist::Mboxlist;
use crate::spool::names::MboxName;

/// The spool a server delivers into.
pub struct SpoolStore {
    ctx: SpoolContext,
    /// `lmtp_strict_quota`.
    strict_quota: bool,
    /// `duplicatesuppression`.
    dupelim: bool,
    sieve: SieveSettings,
    /// `lmtp_fuzzy_mailbox_match`.
    fuzzy: bool,
    /// `user_deny.db`: users an admin switched off for the `lmtp` service.
    deny: crate::server::pop3::userdeny::UserDeny,
}

impl SpoolStore {
    pub fn open(config: Arc<Config>) -> anyhow::Result<SpoolStore> {
        let strict_quota = config.get_bool("lmtp_strict_quota", false)?;
        let dupelim = config.get_bool("duplicatesuppression", true)?;
        let fuzzy = config.get_bool("lmtp_fuzzy_mailbox_match", false)?;
        let sieve = SieveSettings {
            sievedir: config.get("sievedir").unwrap_or("/usr/sieve").into(),
            usehomedir: config.get_bool("sieveusehomedir", false)?,
            virtdomains: config.virtdomains().enabled(),
            fulldirhash: config.get_bool("fulldirhash", false)?,
        };
        let deny = crate::server::pop3::userdeny::UserDeny::from_config(&config);
        let ctx = SpoolContext::open(config)?;
        if let Some(what) = ctx.unsupported_settings() {
            anyhow::bail!("cannot deliver into this spool: {what}");
        }
        let orphans = ctx.remove_orphan_stage_files();
        if orphans > 0 {
            log::info!("removed {orphans} stage file(s) left by delivery processes that died");
        }
        Ok(SpoolStore {
            ctx,
            strict_quota,
            dupelim,
            sieve,
            fuzzy,
            deny,
        })
    }

    /// Quota deltas as lmtpd: 0 ("already over"), the real size with
    /// `lmtp_strict_quota`; IGNOREQUOTA skips the check at delivery (`quotaoverride`).
    fn check_quota(&self, name: &[u8], rcpt: &Rcpt, size: u64) -> Result<(), DeliveryError> {
        if rcpt.ignorequota {
            return Ok(());
        }
        let (storage, messages) = if self.strict_quota { (size, 1) } else { (0, 0) };
        self.ctx
            .check_quota(name, storage, messages)
            .map_err(|e| to_delivery_error(name, e))
    }

    /// The RCPT-time check (`verify_user`): as [`Self::check_quota`], except that
    /// IGNOREQUOTA skips only STORAGE and MESSAGE (Cyrus passes -1 for those two and 0 for
    /// X-ANNOTATION-STORAGE and X-NUM-FOLDERS, which `append_check` still checks).
    fn verify_quota(&self, name: &[u8], rcpt: &Rcpt, size: u64) -> Result<(), DeliveryError> {
        if !rcpt.ignorequota {
            return self.check_quota(name, rcpt, size);
        }
        self.ctx
            .check_quota_resources(name, [None, None, Some(0), Some(0)])
            .map_err(|e| to_delivery_error(name, e))
    }

    /// The `p` right for `sender` on a mailbox record (`append_check` with `ACL_POST`).
    fn may_post(
        acl: Option<&crate::format::header::Acl>,
        sender: &[u8],
    ) -> Result<(), DeliveryError> {
        let rights = acl.map_or(0, |a| address::rights(a, sender));
        if rights & address::ACL_POST != 0 {
            Ok(())
        } else if rights & address::ACL_LOOKUP != 0 {
            Err(DeliveryError::PermissionDenied)
        } else {
            Err(DeliveryError::Unknown)
        }
    }

    /// `deliver_mailbox`: open with locks, quota, duplicate check, append, commit, mark.
    fn deliver_to(
        &self,
        msg: &StagedMessage,
        ids: &Staged<'_>,
        name: &MboxName,
        post_as: Option<&[u8]>,
        rcpt: &Rcpt,
    ) -> Result<Delivered, DeliveryError> {
        let internal = name.to_internal();
        let err = |e| to_delivery_error(&internal, e);
        let record = self
            .ctx
            .lookup(&internal)
            .map_err(err)?
            .ok_or(DeliveryError::Unknown)?;
        if let Some(sender) = post_as {
            Self::may_post(record.entry.acl.as_ref(), sender)?;
        }
        let mut w = MailboxWriter::open(&self.ctx, &internal).map_err(err)?;
        self.check_quota(&internal, rcpt, ids.size)?;
        let mailbox = name.to_string();
        let uniqueid = w.uniqueid().to_string();
        let dupelim = self.dupelim && !w.dup_deliver() && !ids.message_id.is_empty();
        if dupelim
            && deliver_db::seen(&self.ctx, ids.message_id, &uniqueid, ids.date).map_err(err)?
        {
            return Ok(Delivered::Duplicate { mailbox });
        }
        let uid = w.append(msg, 0).map_err(err)?;
        w.commit().map_err(err)?;
        if dupelim {
            if let Err(e) = deliver_db::mark(&self.ctx, ids.message_id, &uniqueid, ids.date, uid) {
                log::warn!("lmtp: cannot record the delivery to {mailbox} in deliver.db: {e}");
            }
        }
        Ok(Delivered::Appended { mailbox, uid })
    }

    /// `fuzzy_match` (`imap/lmtpd.c`): the mailbox under the same owner (or domain) whose
    /// leading components match `want`'s most deeply, compared case-insensitively with
    /// `-`, `_` and space as one; the first in database order on a tie.
    fn fuzzy_match(&self, want: &MboxName) -> Option<MboxName> {
        let mut prefix = Vec::new();
        if let Some(user) = want.userid() {
            prefix = MboxName::user_inbox(&user, &self.ctx.names)
                .ok()?
                .to_internal();
            prefix.push(b'.');
        } else if let Some(d) = want.domain() {
            prefix.extend_from_slice(d);
            prefix.push(b'!');
        }
        let list = Mboxlist::load(&self.ctx.config, &self.ctx.names, self.ctx.lock_timeout).ok()?;
        let wanted = want.boxes();
        let mut best: Option<(usize, MboxName)> = None;
        for m in list.live() {
            let t = &m.entry.mbtype;
            if t.intermediate
                || t.reserve
                || t.deleted
                || !m.name.to_internal().starts_with(&prefix)
            {
                continue;
            }
            let depth = wanted
                .iter()
                .zip(m.name.boxes())
                .take_while(|(w, h)| fuzzy_eq(w, h))
                .count();
            if depth > best.as_ref().map_or(0, |b| b.0) {
                best = Some((depth, m.name.clone()));
                if depth == wanted.len() {
                    break;
                }
            }
        }
        best.map(|b| b.1)
    }

    /// Deliver to `name`, or with `lmtp_fuzzy_mailbox_match` to its fuzzy match if it
    /// does not exist (`deliver_local`).
    fn deliver_fuzzy(
        &self,
        msg: &StagedMessage,
        ids: &Staged<'_>,
        name: &MboxName,
        sender: &[u8],
        rcpt: &Rcpt,
    ) -> Result<Delivered, DeliveryError> {
        match self.deliver_to(msg, ids, name, Some(sender), rcpt) {
            Err(DeliveryError::Unknown) if self.fuzzy => match self.fuzzy_match(name) {
                Some(m) => self.deliver_to(msg, ids, &m, Some(sender), rcpt),
                None => Err(DeliveryError::Unknown),
            },
            other => other,
        }
    }

    fn deliver_one(
        &self,
        msg: &StagedMessage,
        ids: &Staged<'_>,
        rcpt: &Rcpt,
        sender: &[u8],
    ) -> Result<Delivered, DeliveryError> {
        match &rcpt.target {
            Target::Shared { mailbox } => self.deliver_fuzzy(msg, ids, mailbox, sender, rcpt),
            Target::User { inbox, folder, .. } => {
                if let Some(f) = folder {
                    match self.deliver_fuzzy(msg, ids, f, sender, rcpt) {
                        Ok(d) => return Ok(d),
                        Err(e) => log::debug!("lmtp: {f}: {e:?}; delivering to {inbox}"),
                    }
                }
                self.deliver_to(msg, ids, inbox, None, rcpt)
            }
        }
    }
}

/// `fuzzyeq`: equal ignoring ASCII case, with `-`, `_` and space interchangeable.
fn fuzzy_eq(a: &[u8], b: &[u8]) -> bool {
    const WSP: &[u8] = b"- _";
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.eq_ignore_ascii_case(y) || (WSP.contains(x) && WSP.contains(y)))
}

/// Cyrus's per-recipient error for a spool failure (text from `imap/imap_err.et`); the
/// details go to the log.
fn to_delivery_error(name: &[u8], e: AppendError) -> DeliveryError {
    let name = String::from_utf8_lossy(name);
    match e {
        AppendError::MailboxUnknown { .. } => DeliveryError::Unknown,
        AppendError::OverQuota { .. } => DeliveryError::OverQuota,
        AppendError::NoSpace { .. } => {
            log::error!("lmtp: {name}: {e}");
            DeliveryError::NoSpace("mail system storage has been exceeded".into())
        }
        AppendError::Corrupt { .. } => {
            log::error!("lmtp: {name}: {e}");
            DeliveryError::BadFormat("Mailbox has an invalid format".into())
        }
        AppendError::Unsupported { .. } => {
            log::error!("lmtp: {name}: {e}");
            DeliveryError::BadFormat("Operation is not supported on mailbox".into())
        }
        AppendError::Locked { .. } => {
            log::error!("lmtp: {name}: {e}");
            DeliveryError::System("Mailbox is locked".into())
        }
        other => {
            log::error!("lmtp: {name}: {other}");
            DeliveryError::System("System I/O error".into())
        }
    }
}

impl Mailstore for SpoolStore {
    fn verify(&self, rcpt: &Rcpt, sender: &[u8], size: u64) -> Result<(), DeliveryError> {
        let (name, post) = match &rcpt.target {
            Target::User { inbox, .. } => (inbox, false),
            Target::Shared { mailbox } => (mailbox, true),
        };
        let mut internal = name.to_internal();
        let mut record = self
            .ctx
            .lookup(&internal)
            .map_err(|e| to_delivery_error(&internal, e))?;
        if record.is_none() && post && self.fuzzy {
            // `verify_user`: a shared folder may be matched fuzzily.
            if let Some(m) = self.fuzzy_match(name) {
                internal = m.to_internal();
                record = self
                    .ctx
                    .lookup(&internal)
                    .map_err(|e| to_delivery_error(&internal, e))?;
            }
        }
        let record = record.ok_or(DeliveryError::Unknown)?;
        if post {
            Self::may_post(record.entry.acl.as_ref(), sender)?;
        }
        self.verify_quota(&internal, rcpt, size)?;
        // `verify_user`: after the mailbox and quota checks, a user listed in user_deny.db
        // for this service (Cyrus's `config_ident`) is refused with IMAP_MAILBOX_DISABLED.
        if let Target::User { inbox, .. } = &rcpt.target {
            if let Some(userid) = inbox.userid() {
                let userid = String::from_utf8_lossy(&userid);
                if self.deny.check(&userid, "lmtp").is_some() {
                    log::info!("verify_user({userid}) failed: Delivery to mailbox is disabled");
                    return Err(DeliveryError::Disabled(
                        "Delivery to mailbox is disabled".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    fn active_sieve(&self, rcpt: &Rcpt) -> Option<PathBuf> {
        let Target::User { inbox, .. } = &rcpt.target else {
            return None;
        };
        let record = self.ctx.lookup(&inbox.to_internal()).ok()??;
        let found = sieve::find_script(
            &self.sieve,
            &Inbox {
                localpart: inbox.localpart()?,
                domain: inbox.domain(),
                legacy_dirs: record.entry.legacy_dirs(),
                uniqueid: record.entry.uniqueid.as_deref().unwrap_or_default(),
            },
        );
        found
    }

    fn stage_dir(&self, rcpt: &Rcpt) -> Result<PathBuf, DeliveryError> {
        let name = match &rcpt.target {
            Target::User { inbox, .. } => inbox,
            Target::Shared { mailbox } => mailbox,
        };
        let internal = name.to_internal();
        let err = |e| to_delivery_error(&internal, e);
        let record = self
            .ctx
            .lookup(&internal)
            .map_err(err)?
            .ok_or(DeliveryError::Unknown)?;
        let partition = record
            .entry
            .partition
            .as_deref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .ok_or_else(|| DeliveryError::BadFormat("Mailbox has an invalid format".into()))?;
        self.ctx.stage_dir(&partition).map_err(err)
    }

    fn deliver(
        &self,
        msg: &Staged<'_>,
        rcpts: &[Rcpt],
        sender: &[u8],
    ) -> Vec<Result<Delivered, DeliveryError>> {
        let staged = match StagedMessage::from_file_with(
            msg.path,
            msg.internaldate,
            self.ctx.parse_options(),
        ) {
            Ok(s) => s,
            Err(e) => {
                let err = to_delivery_error(msg.path.as_os_str().as_encoded_bytes(), e);
                return rcpts.iter().map(|_| Err(err.clone())).collect();
            }
        };
        rcpts
            .iter()
            .map(|r| self.deliver_one(&staged, msg, r, sender))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fuzzy_eq;

    #[test]
    fn fuzzy_names_as_fuzzyeq() {
        assert!(fuzzy_eq(b"Mailing-Lists", b"mailing lists"));
        assert!(fuzzy_eq(b"a_b", b"A-B"));
        assert!(!fuzzy_eq(b"ab", b"abc"));
        assert!(!fuzzy_eq(b"a.b", b"a b"));
    }
}
