//! Progress and tables.
