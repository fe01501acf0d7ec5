//! The spool layer: configuration, names and paths, locks, atomic writes, walking.
//!
//! Uses `format/` for the bytes; owns every policy about files on disk.

pub mod append;
pub mod atomic;
pub mod config;
pub mod db;
pub mod dedupe;
pub mod deliver_db;
pub mod lock;
pub mod mailbox;
pub mod mailbox_lock;
pub mod mboxlist;
pub mod names;
pub mod paths;
pub mod quota;
pub mod scan;
