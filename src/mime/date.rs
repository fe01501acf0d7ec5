//! Date header → the record's `sentdate` (the date at local midnight) and `gmtime` (the UTC
//! instant), as `message_create_record` derives them with `time_from_rfc5322`
//! (lib/times.c; docs: cyrus-mailbox-format.md §3.4, §9).

/// `(sentdate, gmtime)` for a raw Date header value; `(0, 0)` when absent or unparsable
/// (the caller substitutes the internaldate as Cyrus does).
pub fn parse_date(raw: Option<&[u8]>) -> (u64, u64) {
    let _ = raw;
    (0, 0)
}
