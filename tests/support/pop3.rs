//! What the POP3 spool tests share: a minimal POP3 client that records every byte it reads,
//! masking of what legitimately differs between Cyrus's pop3d and cyrkit (host, version,
//! challenge, session id), quota usage as Cyrus's `quota` reports it, and IMAP INTERNALDATE
//! strings.
//!
//! Must not: hide a difference in what a client sees (only the parts named above are masked).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::cyrus::CyrusInstance;

/// A minimal POP3 client.
pub struct Pop {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Pop {
    /// Connects to the loopback `port` (retrying for 10 s while the server starts).
    pub fn connect(port: u16) -> Pop {
        let deadline = Instant::now() + Duration::from_secs(10);
        let s = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("connect {port}: {e}"),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Pop {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    /// Connects and reads the greeting, which is returned too.
    pub fn greeted(port: u16) -> (Pop, String) {
        let mut p = Pop::connect(port);
        let g = p.line();
        (p, g)
    }

    /// One line as sent (with its CRLF); empty when the server closed the connection.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l
    }

    /// Sends `cmd`; reads one line, or up to the `.` line when `multi` and the reply is +OK.
    pub fn cmd(&mut self, cmd: &str, multi: bool) -> String {
        self.w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let first = self.line();
        if !multi || !first.starts_with("+OK") {
            return first;
        }
        let mut out = first;
        loop {
            let l = self.line();
            out.push_str(&l);
            if l == ".\r\n" || l.is_empty() {
                return out;
            }
        }
    }

    /// USER + PASS; the reply to PASS.
    pub fn login(&mut self, user: &str, password: &str) -> String {
        let r = self.cmd(&format!("USER {user}"), false);
        assert_eq!(r, "+OK Name is a valid mailbox\r\n", "USER {user}");
        self.cmd(&format!("PASS {password}"), false)
    }

    /// Drops the connection without QUIT (both directions shut down).
    pub fn hang_up(self) {
        let _ = self.w.shutdown(std::net::Shutdown::Both);
    }
}

/// Whether a PASS/AUTH reply says the maildrop is open.
pub fn is_ready(reply: &str) -> bool {
    reply.starts_with("+OK Mailbox locked and ready SESSIONID=<")
}

/// Greeting and CAPA with what legitimately differs (host, version, challenge, UTF8, SASL
/// list, session id) masked.
pub fn shape(s: &str) -> String {
    s.lines()
        .filter(|l| *l != "UTF8")
        .map(|l| {
            if let Some(i) = l.find("IMPLEMENTATION Cyrus POP3 ") {
                format!("{}IMPLEMENTATION Cyrus POP3 V", &l[..i])
            } else if l.starts_with("+OK ") && l.contains("server ready") {
                "+OK HOST Cyrus POP3 V server ready".to_string()
            } else if l.starts_with("SASL ") {
                // Cyrus lists every SASL plugin installed; cyrkit what its store can check.
                "SASL ...".to_string()
            } else if let Some(i) = l.find("SESSIONID=<") {
                format!("{}SESSIONID=<ID>", &l[..i])
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The UIDs in a UIDL listing of the `cyrus` format (`n uidvalidity.uid` lines).
pub fn uidl_uids(listing: &str) -> Vec<u32> {
    listing
        .lines()
        .filter_map(|l| l.split_once(' ')?.1.rsplit_once('.')?.1.parse().ok())
        .collect()
}

/// STORAGE usage of quota root `root` as `quota -J` reports it (`used`, in bytes).
pub fn quota_used(cy: &CyrusInstance, root: &str) -> u64 {
    let q = cy.run_tool("quota", &["-J"]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&q.stdout).expect("quota -J is JSON");
    v[root]["STORAGE"]["used"]
        .as_u64()
        .unwrap_or_else(|| panic!("no STORAGE used for {root}: {v}"))
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An IMAP date-time (`dd-Mon-yyyy hh:mm:ss +0000`) for APPEND's INTERNALDATE, from
/// coreutils `date` in the C locale.
pub fn imap_date(secs: i64) -> String {
    let out = std::process::Command::new("date")
        .env("LC_ALL", "C")
        .args(["-u", "-d", &format!("@{secs}"), "+%d-%b-%Y %H:%M:%S +0000"])
        .output()
        .expect("run date");
    assert!(out.status.success(), "date: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}
