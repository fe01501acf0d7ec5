//! The HEADERS cache item: which raw top-level header fields Cyrus 3.6 caches
//! (`message_parse_headers` + `mailbox_cached_header_inline` + `is_cached_header` +
//! imap/mailbox_header_cache.gperf; docs: cyrus-mailbox-format.md §4.8).

/// `MAX_CACHED_HEADER_SIZE`: the colon must come within this many bytes of the line start.
const MAX_CACHED_HEADER_SIZE: usize = 32;

/// Field names (lowercase) in mailbox_header_cache.gperf whose entry is `BIT32_MAX`: never
/// cached.
const NEVER_CACHED: &[&[u8]] = &[
    b"bcc",
    b"cc",
    b"date",
    b"delivery-date",
    b"envelope-to",
    b"from",
    b"in-reply-to",
    b"mime-version",
    b"received",
    b"return-path",
    b"subject",
    b"to",
    b"dkim-signature",
    b"domainkey-signature",
    b"domainkey-x509",
    b"message-id",
    b"arc-seal",
    b"arc-message-signature",
    b"arc-authentication-results",
    b"authentication-results",
    b"received-spf",
    b"archived-at",
    b"listbox-message-date",
    b"topicbox-message-uuid",
    b"topicbox-policy-reasoning",
];

/// `x-` names listed in the gperf table with a cache version: cached despite the prefix.
const CACHED_X_HEADERS: &[&[u8]] = &[
    b"x-mailer",
    b"x-trace",
    b"x-ref",
    b"x-priority",
    b"x-msmail-priority",
    b"x-msoesrec",
    b"x-spam-score",
    b"x-resolved-to",
    b"x-delivered-to",
    b"x-mail-from",
    b"x-truedomain-domain",
    b"x-me-message-id",
    b"x-cyrus-session-id",
    b"x-universally-unique-identifier",
    b"x-uniform-type-identifier",
    b"x-apple-base-url",
    b"x-apple-mail-remote-attachments",
];

/// `mailbox_cached_header_inline` != BIT32_MAX for the line starting at `line`.
fn is_cached(line: &[u8]) -> bool {
    for (i, &c) in line.iter().take(MAX_CACHED_HEADER_SIZE).enumerate() {
        match c {
            b'\r' | b'\n' => return false,
            b':' => {
                let name = &line[..i];
                let listed = |table: &[&[u8]]| table.iter().any(|n| name.eq_ignore_ascii_case(n));
                if listed(NEVER_CACHED) {
                    return false;
                }
                if listed(CACHED_X_HEADERS) {
                    return true;
                }
                return !(name.len() >= 2
                    && name[0].eq_ignore_ascii_case(&b'x')
                    && name[1] == b'-');
            }
            _ => {}
        }
    }
    false
}

/// End of the field starting at `start` in `block` (`message_parse_header`): the first LF at
/// or after `start + 1` that is not followed by SP/TAB, minus a CR before it; or the end.
pub(crate) fn field_end(block: &[u8], start: usize) -> usize {
    let mut from = start + 1;
    while from < block.len() {
        match super::message::memchr(b'\n', &block[from..]) {
            Some(off) => {
                let lf = from + off;
                if matches!(block.get(lf + 1), Some(b' ' | b'\t')) {
                    from = lf + 1;
                    continue;
                }
                return if lf > start && block[lf - 1] == b'\r' {
                    lf - 1
                } else {
                    lf
                };
            }
            None => break,
        }
    }
    block.len()
}

/// The HEADERS item for a top-level header block (the bytes Cyrus slurped as headers,
/// blank line included when present). Fields are copied raw, folds kept, each ended by
/// CRLF. Like Cyrus, scanning stops at the first NUL, and lines after `maxheaderlines`
/// (0 = unlimited; Cyrus processes one line more than the limit) are ignored.
pub fn cached_headers(header_block: &[u8], maxheaderlines: usize) -> Vec<u8> {
    let end = header_block
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(header_block.len());
    let block = &header_block[..end];
    let mut out = Vec::new();
    // Cyrus primes its buffer with "\n"; line k starts after the k-th LF of that buffer.
    let mut line_start = Some(0usize);
    let mut k = 0usize;
    while let Some(start) = line_start {
        if start >= block.len() || (maxheaderlines != 0 && k > maxheaderlines) {
            break;
        }
        let line = &block[start..];
        if !matches!(line.first(), Some(b' ' | b'\t')) && is_cached(line) {
            let stop = field_end(block, start);
            out.extend_from_slice(&block[start..stop]);
            out.extend_from_slice(b"\r\n");
        }
        line_start = super::message::memchr(b'\n', line).map(|p| start + p + 1);
        k += 1;
    }
    out
}
