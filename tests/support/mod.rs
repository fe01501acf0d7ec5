//! Shared helpers for the integration tests.

pub mod cli;
pub mod clients;
pub mod cyrus;
pub mod postfix;
pub mod serve;
