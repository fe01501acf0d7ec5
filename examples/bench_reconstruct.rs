//! Writes N message files `1.` .. `N.` into a mailbox directory for `scripts/bench-reconstruct`:
//! realistic mail of a few KB (Received chains, addresses with display names, encoded
//! subjects), one in four multipart/alternative, one in six multipart/mixed with a base64
//! attachment of 2 to 24 KB. Deterministic (a fixed xorshift seed), CRLF line ends, mtimes left
//! as written.
//!
//! Usage: `cargo run --release --example bench_reconstruct -- MAILBOXDIR N`

use std::fmt::Write as _;
use std::path::PathBuf;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "meeting",
    "report",
    "quarterly",
    "budget",
    "the",
    "and",
    "server",
    "mail",
    "review",
    "please",
    "attached",
    "draft",
    "schedule",
    "update",
    "project",
    "customer",
    "invoice",
    "thanks",
    "regards",
    "tomorrow",
    "deadline",
    "release",
    "notes",
    "migration",
    "backup",
];
const NAMES: &[&str] = &[
    "Alice Example",
    "Bob O'Neil",
    "=?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?=",
    "\"Smith, Carol\"",
    "Dave",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn words(rng: &mut Rng, n: u64) -> String {
    (0..n)
        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

fn paragraph(rng: &mut Rng, lines: u64) -> String {
    let mut s = String::new();
    for _ in 0..lines {
        let n = 6 + rng.below(8);
        let _ = write!(s, "{}\r\n", words(rng, n));
    }
    s
}

fn base64_lines(rng: &mut Rng, bytes: u64) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    let chars = bytes * 4 / 3;
    for i in 0..chars {
        s.push(B64[rng.below(64) as usize] as char);
        if i % 76 == 75 {
            s.push_str("\r\n");
        }
    }
    s.push_str("\r\n");
    s
}

fn message(rng: &mut Rng, i: u64) -> String {
    let from = NAMES[rng.below(NAMES.len() as u64) as usize];
    let to = NAMES[rng.below(NAMES.len() as u64) as usize];
    let day = 1 + rng.below(28);
    let month = MONTHS[rng.below(12) as usize];
    let (h, m, s) = (rng.below(24), rng.below(60), rng.below(60));
    let mut msg = String::new();
    for hop in 0..(2 + rng.below(3)) {
        let _ = write!(
            msg,
            "Received: from mx{hop}.example.net (mx{hop}.example.net [192.0.2.{}])\r\n\
             \tby mail.example.com (Cyrus) with LMTPA; {day} {month} 2023 {h:02}:{m:02}:{s:02} +0000\r\n",
            rng.below(250)
        );
    }
    let subject_words = 3 + rng.below(6);
    let _ = write!(
        msg,
        "From: {from} <sender{}@example.org>\r\nTo: {to} <user@example.com>\r\n\
         Cc: team@example.com, \"Ops\" <ops@example.com>\r\n\
         Subject: {}\r\nDate: Tue, {day} {month} 2023 {h:02}:{m:02}:{s:02} +0100\r\n\
         Message-ID: <bench-{i}@example.org>\r\nX-Mailer: bench 1.0\r\nMIME-Version: 1.0\r\n",
        rng.below(50),
        words(rng, subject_words)
    );
    let kind = rng.below(12);
    if kind < 2 {
        let kb = 2 + rng.below(23);
        let lines = 5 + rng.below(10);
        let _ = write!(
            msg,
            "Content-Type: multipart/mixed; boundary=\"=_mixed_{i}\"\r\n\r\n\
             This is a multi-part message in MIME format.\r\n--=_mixed_{i}\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
             {}--=_mixed_{i}\r\nContent-Type: application/pdf; name=\"doc{i}.pdf\"\r\n\
             Content-Disposition: attachment; filename=\"doc{i}.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}--=_mixed_{i}--\r\n",
            paragraph(rng, lines),
            base64_lines(rng, kb * 1024)
        );
    } else if kind < 5 {
        let lines = 10 + rng.below(30);
        let text = paragraph(rng, lines);
        let _ = write!(
            msg,
            "Content-Type: multipart/alternative; boundary=\"alt{i}\"\r\n\r\n--alt{i}\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\r\n{text}--alt{i}\r\n\
             Content-Type: text/html; charset=us-ascii\r\n\r\n<html><body><p>{}</p></body></html>\r\n\
             --alt{i}--\r\n",
            text.replace("\r\n", "<br>\r\n")
        );
    } else {
        let lines = 15 + rng.below(60);
        let _ = write!(
            msg,
            "Content-Type: text/plain; charset=us-ascii\r\n\r\n{}",
            paragraph(rng, lines)
        );
    }
    msg
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: bench_reconstruct MAILBOXDIR N")?);
    let n: u64 = args
        .next()
        .ok_or("usage: bench_reconstruct MAILBOXDIR N")?
        .parse()?;
    std::fs::create_dir_all(&dir)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut total = 0u64;
    for i in 1..=n {
        let m = message(&mut rng, i);
        total += m.len() as u64;
        std::fs::write(dir.join(format!("{i}.")), m)?;
    }
    eprintln!(
        "{n} messages, {} MB, mean {} bytes, in {}",
        total / 1_000_000,
        total / n.max(1),
        dir.display()
    );
    Ok(())
}
