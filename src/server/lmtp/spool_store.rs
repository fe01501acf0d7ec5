//! [`Mailstore`] over the real spool ([`crate::spool::append`]): RCPT-time checks as
//! `verify_user`, delivery as `deliver_local` + `deliver_mailbox` (`imap/lmtpd.c`).

use std::path::PathBuf;
use std::sync::Arc;

use super::address::{self, Target};
use super::store::{Delivered, DeliveryError, Mailstore, Rcpt, Staged};
use crate::spool::append::{AppendError, MailboxWriter, SpoolContext, StagedMessage};
use crate::spool::config::Config;
use crate::spool::deliver_db;
use crate::spool::names::MboxName;

/// The spool a server delivers into.
pub struct SpoolStore {
    ctx: SpoolContext,
    /// `lmtp_strict_quota`.
    strict_quota: bool,
    /// `duplicatesuppression`.
    dupelim: bool,
}

impl SpoolStore {
    pub fn open(config: Arc<Config>) -> anyhow::Result<SpoolStore> {
        let strict_quota = config.get_bool("lmtp_strict_quota", false)?;
        let dupelim = config.get_bool("duplicatesuppression", true)?;
        let ctx = SpoolContext::open(config)?;
        if let Some(what) = ctx.unsupported_settings() {
            anyhow::bail!("cannot deliver into this spool: {what}");
        }
        Ok(SpoolStore {
            ctx,
            strict_quota,
            dupelim,
        })
    }

    /// Quota deltas as lmtpd: 0 ("already over"), the real size with
    /// `lmtp_strict_quota`; IGNOREQUOTA skips the check.
    fn check_quota(&self, name: &[u8], rcpt: &Rcpt, size: u64) -> Result<(), DeliveryError> {
        if rcpt.ignorequota {
            return Ok(());
        }
        let (storage, messages) = if self.strict_quota { (size, 1) } else { (0, 0) };
        self.ctx
            .check_quota(name, storage, messages)
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

    fn deliver_one(
        &self,
        msg: &StagedMessage,
        ids: &Staged<'_>,
        rcpt: &Rcpt,
        sender: &[u8],
    ) -> Result<Delivered, DeliveryError> {
        match &rcpt.target {
            Target::Shared { mailbox } => self.deliver_to(msg, ids, mailbox, Some(sender), rcpt),
            Target::User { inbox, folder, .. } => {
                if let Some(f) = folder {
                    match self.deliver_to(msg, ids, f, Some(sender), rcpt) {
                        Ok(d) => return Ok(d),
                        Err(e) => log::debug!("lmtp: {f}: {e:?}; delivering to {inbox}"),
                    }
                }
                self.deliver_to(msg, ids, inbox, None, rcpt)
            }
        }
    }
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
        let internal = name.to_internal();
        let record = self
            .ctx
            .lookup(&internal)
            .map_err(|e| to_delivery_error(&internal, e))?
            .ok_or(DeliveryError::Unknown)?;
        if post {
            Self::may_post(record.entry.acl.as_ref(), sender)?;
        }
        self.check_quota(&internal, rcpt, size)
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
