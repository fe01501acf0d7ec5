//! The LMTP server (`cyrkit serve --lmtp`): Cyrus 3.6 lmtpd's protocol, replies and
//! delivery rules, plus CHUNKING.
//!
//! - [`command`]: command lines → [`command::Command`] (sans I/O).
//! - [`address`]: recipient addresses → mailboxes (`+detail`, shared folders, domains).
//! - [`message`]: the stage file as Cyrus writes it (added headers, 8-bit handling,
//!   bare-newline and NUL refusal, size limit), streamed.
//! - [`store`]: the [`store::Mailstore`] trait the session delivers through.
//! - [`sieve`]: finding a recipient's active Sieve script (which cyrkit cannot run).
//! - [`spool_store`]: the Mailstore over the real spool (`spool::append`).
//! - [`session`]: one connection, over a [`crate::server::channel::Channel`].

pub mod address;
pub mod command;
pub mod message;
pub mod session;
pub mod sieve;
pub mod spool_store;
pub mod store;

pub use session::{run, Settings};
pub use spool_store::SpoolStore;

#[cfg(test)]
mod tests;
