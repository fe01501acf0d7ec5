//! What the LMTP session needs from the spool, as a trait so the session runs against an
//! in-memory fake in tests and against the real spool ([`super::spool_store`]) in the
//! server.

use std::path::{Path, PathBuf};

use super::address::Target;

/// Why a recipient cannot get the message, mapped to Cyrus's per-recipient replies
/// (`send_lmtp_error` in `imap/lmtpengine.c`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// No such mailbox (or no `l` right): `550 5.1.1 User unknown`.
    Unknown,
    /// No `p` right on a shared folder: `550 5.7.1 Permission denied`.
    PermissionDenied,
    /// `452 4.2.2` / `552 5.2.2 Over quota`.
    OverQuota,
    /// Mailbox moved/reserved/user denied: `451 4.2.1 <text>`.
    Disabled(String),
    /// Mailbox unreadable or of a type that takes no mail: `451 4.2.0 <text>`.
    BadFormat(String),
    /// Disk full: `451 4.3.1 <text>`.
    NoSpace(String),
    /// Anything else (I/O, locks, bad name): `451 4.3.0 <text>`.
    System(String),
}

impl DeliveryError {
    /// The full reply, CRLF-terminated.
    pub fn reply(&self, session_id: &str, postmaster: &str, over_quota_perm: bool) -> String {
        match self {
            DeliveryError::Unknown => {
                "550-Mailbox unknown.  Either there is no mailbox associated with this\r\n\
                 550-name or you do not have authorization to see it.\r\n\
                 550 5.1.1 User unknown\r\n"
                    .to_string()
            }
            DeliveryError::PermissionDenied => format!(
                "550-You do not have permission to post a message to this mailbox.\r\n\
                 550-Please contact the owner of this mailbox in order to submit\r\n\
                 550-your message, or {postmaster} if you believe you\r\n\
                 550-received this message in error.\r\n\
                 550 5.7.1 Permission denied\r\n"
            ),
            DeliveryError::OverQuota if over_quota_perm => {
                format!("552 5.2.2 Over quota SESSIONID=<{session_id}>\r\n")
            }
            DeliveryError::OverQuota => {
                format!("452 4.2.2 Over quota SESSIONID=<{session_id}>\r\n")
            }
            DeliveryError::Disabled(t) => format!("451 4.2.1 {t}\r\n"),
            DeliveryError::BadFormat(t) => format!("451 4.2.0 {t}\r\n"),
            DeliveryError::NoSpace(t) => format!("451 4.3.1 {t}\r\n"),
            DeliveryError::System(t) => format!("451 4.3.0 {t}\r\n"),
        }
    }
}

/// One staged message, ready to be appended.
#[derive(Debug, Clone)]
pub struct Staged<'a> {
    pub path: &'a Path,
    pub size: u64,
    /// Seconds since the epoch: the date of the Received header LMTP added.
    pub internaldate: i64,
    /// The `Message-ID` and `Date` values (duplicate suppression key).
    pub message_id: &'a [u8],
    pub date: &'a [u8],
}

/// What became of one recipient's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    Appended {
        mailbox: String,
        uid: u32,
    },
    /// Already delivered (deliver.db): reported as success, nothing appended.
    Duplicate {
        mailbox: String,
    },
}

/// One recipient of a transaction.
#[derive(Debug, Clone)]
pub struct Rcpt {
    pub target: Target,
    pub ignorequota: bool,
}

/// The spool as the LMTP session sees it.
pub trait Mailstore {
    /// RCPT-time check (`verify_user`): a user's INBOX must exist and not be over quota
    /// already; a shared folder needs the `p` right for `sender` (`anonymous` without
    /// `MAIL AUTH=`). `size` is MAIL's `SIZE=` (0 if none).
    fn verify(&self, rcpt: &Rcpt, sender: &[u8], size: u64) -> Result<(), DeliveryError>;
    /// The active Sieve script of a user recipient's owner, if any (for the log).
    fn active_sieve(&self, _rcpt: &Rcpt) -> Option<PathBuf> {
        None
    }
    /// The directory to stage the message in: the partition of the recipient's mailbox.
    fn stage_dir(&self, rcpt: &Rcpt) -> Result<PathBuf, DeliveryError>;
    /// Deliver one copy per recipient, in order (`deliver_local` for each): a `+detail`
    /// folder if it exists and `sender` may post to it, else the INBOX. Each `Ok` is
    /// durable (committed) when returned. One result per recipient, in RCPT order.
    fn deliver(
        &self,
        msg: &Staged<'_>,
        rcpts: &[Rcpt],
        sender: &[u8],
    ) -> Vec<Result<Delivered, DeliveryError>>;
}
