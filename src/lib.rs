//! cyrkit: repair and maintenance of Cyrus IMAP mail stores.
//!
//! # Layout
//! - [`format`]: pure codecs over bytes, one module per Cyrus on-disk format
//!   (`cyrus.index`, `cyrus.cache`, `cyrus.header`, dlist, twoskip, skiplist, flat,
//!   mailboxes.db entries, quota records). No I/O policy.
//! - [`mime`]: the message parser that produces `cyrus.cache` entries byte for byte as
//!   Cyrus 3.6 does.
//! - [`spool`]: imapd.conf, mailbox names ↔ paths, Cyrus's lock protocol, atomic
//!   replacement of metadata files, walking partitions.
//! - [`cmd`]: one module per subcommand; orchestrates spool + format and owns output.
//! - [`server`]: `cyrkit serve`: listeners, the session channel, TLS, LMTP and POP3.
//! - [`ui`]: progress bars and tables.

pub mod cmd;
pub mod format;
pub mod mime;
pub mod server;
pub mod spool;
pub mod ui;
