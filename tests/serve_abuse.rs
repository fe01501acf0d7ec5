//! Hostile and broken clients against one `cyrkit serve` (LMTP + POP3) over a real Cyrus 3.6
//! spool, while a well-behaved client is served the whole time and its latency is measured:
//! a client sending one byte per second, over-long command lines, 50 MB of DATA beyond
//! `maxmessagesize`, a client that disconnects mid-DATA and one that disconnects mid-RETR,
//! repeated bad passwords from several clients at once, and pipelined binary junk with NULs.
//! Afterwards nothing is half-delivered, no stage file is left, Cyrus's `reconstruct -n` is
//! clean, and the server's memory stayed flat.

#[path = "serve_rel/common.rs"]
mod common;
mod support;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use support::cyrus::{require_cyrus, CyrusOptions};

const MAX_SIZE: u64 = 8 * 1024 * 1024;
/// The well-behaved client's worst allowed latency for one login or one delivery.
const MAX_LATENCY: Duration = Duration::from_secs(3);

fn setup() -> Served {
    serve_lmtp_pop3(
        CyrusOptions::default()
            .with("allowplaintext", "yes")
            .with("maxmessagesize", &MAX_SIZE.to_string())
            .with("failedloginpause", "1"),
        &["normal", "victim", "big"],
        &[("normal", "pw"), ("victim", "pw"), ("big", "pw")],
        true,
        &[],
        RunAs::Cyrus,
    )
}

/// The well-behaved client: POP3 login + STAT + QUIT and one LMTP delivery, over and over
/// until `stop`; the worst latency of each step and the delivered ids.
fn normal_client(
    lport: u16,
    pport: u16,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Duration, Vec<String>, Vec<String>)> {
    std::thread::spawn(move || {
        let mut worst = Duration::ZERO;
        let mut delivered = Vec::new();
        let mut errors = Vec::new();
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            match pop3_login(pport, "normal", "pw").and_then(|mut c| {
                c.cmd("STAT")?;
                c.cmd("QUIT")
            }) {
                Ok(q) if q.starts_with("+OK") => {}
                other => errors.push(format!("pop3: {other:?}")),
            }
            worst = worst.max(t.elapsed());
            let t = Instant::now();
            let id = format!("normal-{n}");
            let mut acked = Vec::new();
            match lmtp(lport)
                .and_then(|mut c| lmtp_deliver(&mut c, &["normal"], &message(&id, 5), &mut acked))
            {
                Ok(()) if acked == [250] => delivered.push(id),
                other => errors.push(format!("lmtp: {other:?} {acked:?}")),
            }
            worst = worst.max(t.elapsed());
            n += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        (worst, delivered, errors)
    })
}

/// Reads everything the server sends on `c` in the background (so a flood of replies
/// cannot block it), returning the bytes at EOF.
fn drain(stream: std::net::TcpStream) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut s = stream;
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        let mut v = Vec::new();
        let _ = s.read_to_end(&mut v);
        v
    })
}

#[test]
fn hostile_clients_do_not_hurt_the_server_or_other_clients() {
    if !require_cyrus() {
        return;
    }
    let Served {
        mut server,
        cy,
        lport,
        pport,
    } = setup();
    // A big message for the RETR that is cut off.
    let mut big = message("bigmsg", 0);
    while big.len() < 6 * 1024 * 1024 {
        big.extend_from_slice(&[b'x'; 998]);
        big.extend_from_slice(b"\r\n");
    }
    let mut c = lmtp(lport).unwrap();
    let mut acked = Vec::new();
    lmtp_deliver(&mut c, &["big"], &big, &mut acked).unwrap();
    assert_eq!(acked, [250]);
    drop(c);
    let files_before = message_files(&cy.spool_dir());

    let stop = Arc::new(AtomicBool::new(false));
    let normal = normal_client(lport, pport, stop.clone());

    // 1. Slow clients: one byte per second, LMTP and POP3, in the background.
    let slow = std::thread::spawn(move || {
        let mut l = Client::connect(lport).unwrap();
        let mut p = Client::connect(pport).unwrap();
        assert!(l.reply().unwrap().starts_with("220"));
        assert!(p.line().unwrap().starts_with("+OK"));
        for (a, b) in b"NOOP\r\n".iter().zip(b"QUIT\r\n") {
            l.send(&[*a]).unwrap();
            p.send(&[*b]).unwrap();
            std::thread::sleep(Duration::from_secs(1));
        }
        (l.reply().unwrap(), p.line().unwrap())
    });

    // 2. Over-long command lines: an error reply, the session goes on.
    let mut l = lmtp(lport).unwrap();
    let long = format!("NOOP {}\r\n", "a".repeat(20_000));
    l.send(long.as_bytes()).unwrap();
    assert_eq!(l.reply().unwrap(), "500 5.5.2 Syntax error\r\n");
    assert_eq!(l.cmd("NOOP").unwrap(), "250 2.0.0 ok\r\n");
    // 1 MB without a line end is consumed, not buffered.
    reset_hwm(server.pid);
    let hwm0 = server.status_kb("VmHWM");
    l.send(&vec![b'A'; 1 << 20]).unwrap();
    l.send(b"\r\n").unwrap();
    assert_eq!(l.reply().unwrap(), "500 5.5.2 Syntax error\r\n");
    assert_eq!(l.cmd("RSET").unwrap().get(..3), Some("250"));
    let mut p = pop3_login(pport, "victim", "pw").unwrap();
    p.send(format!("STAT {}\r\n", "9".repeat(20_000)).as_bytes())
        .unwrap();
    assert_eq!(p.line().unwrap(), "-ERR Unrecognized command\r\n");
    assert!(p.cmd("STAT").unwrap().starts_with("+OK 0 0"));
    drop(p);

    // 3. 50 MB of DATA beyond maxmessagesize: 552, nothing delivered, memory flat.
    let t = Instant::now();
    let mut chunk = Vec::new();
    for _ in 0..1024 {
        chunk.extend_from_slice(&[b'y'; 1022]);
        chunk.extend_from_slice(b"\r\n");
    }
    {
        let mut msg = message("huge", 0);
        l.cmd("MAIL FROM:<a@example.org>").unwrap();
        l.cmd("RCPT TO:<victim>").unwrap();
        assert!(l.cmd("DATA").unwrap().starts_with("354"));
        l.send(&msg).unwrap();
        for _ in 0..50 {
            l.send(&chunk).unwrap();
        }
        l.send(b".\r\n").unwrap();
        msg.clear();
        let r = l.reply().unwrap();
        assert!(
            r.starts_with("552 5.2.3 Message size (") && r.contains(&format!("({MAX_SIZE})")),
            "{r:?}"
        );
    }
    let hwm1 = server.status_kb("VmHWM");
    eprintln!(
        "abuse: 1 MB line + 50 MB DATA in {:?}: VmHWM {hwm0} kB -> {hwm1} kB",
        t.elapsed()
    );
    assert!(
        hwm1 < hwm0 + 16 * 1024,
        "server memory grew by {} kB streaming 50 MB",
        hwm1 - hwm0
    );
    assert_eq!(l.cmd("RSET").unwrap().get(..3), Some("250"));
    assert_eq!(l.cmd("QUIT").unwrap(), "221 2.0.0 bye\r\n");

    // 4. Disconnect mid-DATA (LMTP) and mid-BDAT: nothing delivered, no stage file left.
    for bdat in [false, true] {
        let mut l = lmtp(lport).unwrap();
        l.cmd("MAIL FROM:<a@example.org>").unwrap();
        l.cmd("RCPT TO:<victim>").unwrap();
        l.cmd("RCPT TO:<normal>").unwrap();
        if bdat {
            l.send(b"BDAT 1000000 LAST\r\n").unwrap();
        } else {
            assert!(l.cmd("DATA").unwrap().starts_with("354"));
        }
        l.send(&message("cut", 0)).unwrap();
        l.send(&chunk[..100_000]).unwrap();
        l.w.flush().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(l);
    }

    // 5. Disconnect mid-RETR of a 6 MB message, twice; then the maildrop is usable.
    for _ in 0..2 {
        let mut p = pop3_login(pport, "big", "pw").unwrap();
        p.send(b"RETR 1\r\n").unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        p.r.read_exact(&mut buf).unwrap();
        drop(p);
    }
    let mut p = pop3_login(pport, "big", "pw").unwrap();
    p.send(b"RETR 1\r\n").unwrap();
    let m = p.multi().unwrap();
    assert!(m.len() > 6 * 1024 * 1024, "RETR after the cut-off ones");
    assert_eq!(p.cmd("QUIT").unwrap(), "+OK\r\n");

    // 6. Bad passwords from 4 clients at once, 3 each: every one delayed by
    //    failedloginpause (1 s), in parallel (sessions are threads).
    let t = Instant::now();
    let bad: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(pport).unwrap();
                c.line().unwrap();
                let mut out = Vec::new();
                for _ in 0..3 {
                    c.cmd("USER victim").unwrap();
                    let t = Instant::now();
                    let r = c.cmd("PASS wrong").unwrap();
                    out.push((r, t.elapsed()));
                }
                out
            })
        })
        .collect();
    for h in bad {
        for (r, d) in h.join().unwrap() {
            assert_eq!(r, "-ERR [AUTH] Invalid login\r\n");
            assert!(
                d >= Duration::from_millis(950),
                "bad password answered in {d:?}"
            );
        }
    }
    let all = t.elapsed();
    assert!(
        all < Duration::from_secs(7),
        "12 bad passwords from 4 clients took {all:?}: not in parallel"
    );

    // 7. Pipelined junk: binary garbage with NULs and bare CR/LF, 1 MB each, unread
    //    replies drained in the background.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut junk = Vec::with_capacity(1 << 20);
    while junk.len() < 1 << 20 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        junk.extend_from_slice(&rng.to_le_bytes());
        if rng % 5 == 0 {
            junk.extend_from_slice(b"\0\r\nMAIL FROM:<\0>\r\nRCPT TO:<../x>\n");
        }
    }
    for port in [lport, pport] {
        let mut s = connect(port).unwrap();
        let reader = drain(s.try_clone().unwrap());
        let _ = s.write_all(&junk);
        let _ = s.write_all(b"\r\nQUIT\r\n");
        let got = reader.join().unwrap();
        assert!(!got.is_empty(), "no reply to junk on port {port}");
    }

    let (l_slow, p_slow) = slow.join().unwrap();
    assert_eq!(l_slow, "250 2.0.0 ok\r\n");
    assert_eq!(p_slow, "+OK\r\n");
    stop.store(true, Ordering::SeqCst);
    let (worst, delivered, errors) = normal.join().unwrap();
    eprintln!(
        "abuse: the normal client made {} deliveries and logins, worst latency {worst:?}",
        delivered.len()
    );
    assert!(errors.is_empty(), "normal client: {errors:?}");
    assert!(delivered.len() >= 5, "normal client barely served");
    assert!(worst < MAX_LATENCY, "normal client waited {worst:?}");
    assert!(
        server.try_wait().is_none(),
        "server died:\n{}",
        server.output()
    );
    let status = server.stop();
    assert!(status.is_some_and(|s| s.success()), "{}", server.output());

    // Nothing half-delivered: the only new message files are the normal client's.
    let files_after = message_files(&cy.spool_dir());
    for (p, h) in &files_before {
        assert_eq!(
            files_after.get(p),
            Some(h),
            "{} changed or lost",
            p.display()
        );
    }
    assert_eq!(
        files_after.len() - files_before.len(),
        delivered.len(),
        "message files added beyond the acknowledged deliveries"
    );
    let ids: Vec<String> = imap_message_ids(&cy, "normal")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let mut want = delivered.clone();
    want.sort();
    let mut got = ids.clone();
    got.sort();
    assert_eq!(got, want);
    assert!(imap_message_ids(&cy, "victim").is_empty());
    let left = stage_files(&cy.spool_dir());
    assert!(left.is_empty(), "stage files left: {left:?}");
    let rn = reconstruct_n(&cy);
    assert!(
        !rn.contains("found") && !rn.contains("ERROR") && !rn.contains("mismatch"),
        "reconstruct -n:\n{rn}"
    );
}
