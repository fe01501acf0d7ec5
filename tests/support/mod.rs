//! Shared helpers for the integration tests.

pub mod cli;
pub mod clients;
pub mod cyrus;
pub mod pop3;
pub mod postfix;
pub mod saslauthd;
pub mod serve;
pub mod spool;
