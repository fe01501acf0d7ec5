#![no_main]
//! LMTP input must never panic: command lines, recipient addresses (under the name
//! settings the last byte picks), and the message writer fed the same bytes as BDAT data.
//! An accepted message is stored with CRLF line ends only and without NUL bytes.
use cyrkit::server::lmtp::address::{resolve, AddressConfig, Target};
use cyrkit::server::lmtp::command::{parse_command, Command};
use cyrkit::server::lmtp::message::{LineSplitter, MessageOptions, Outcome, StageWriter};
use cyrkit::spool::config::VirtDomains;
use cyrkit::spool::names::{MboxName, NameConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The configuration comes from the last byte, so recipients are resolved under
    // virtdomains, unixhierarchysep, a postuser and a default domain too.
    let knobs = data.last().copied().unwrap_or(0);
    let mut names = NameConfig::default();
    if knobs & 1 != 0 {
        names.virtdomains = VirtDomains::Userid;
    }
    names.unixhierarchysep = knobs & 2 != 0;
    if knobs & 16 != 0 {
        names.default_domain = b"example.com".to_vec();
    }
    let cfg = AddressConfig {
        names,
        downcase: knobs & 8 == 0,
        postuser: if knobs & 4 != 0 {
            b"shared".to_vec()
        } else {
            Vec::new()
        },
    };
    for line in data.split(|&b| b == b'\n') {
        let strict = line.first().is_some_and(|b| b & 1 == 0);
        if let Command::Rcpt(Ok(r)) = parse_command(line, strict) {
            if let Ok(t) = resolve(&r.path, &cfg) {
                let names: Vec<&MboxName> = match &t {
                    Target::User { inbox, folder, .. } => std::iter::once(inbox).chain(folder.iter()).collect(),
                    Target::Shared { mailbox } => vec![mailbox],
                };
                for n in names {
                    let internal = n.to_internal();
                    assert_eq!(&MboxName::from_internal(&internal, &cfg.names).unwrap(), n);
                }
            }
        }
    }
    let opts = MessageOptions {
        munge8bit: data.len() % 2 == 0,
        reject8bit: data.len() % 3 == 0,
        max_size: 1 << 20,
    };
    let mut w = StageWriter::new(Vec::new(), b"X: y\r\n", opts, b"<id@x>".to_vec(), b"now".to_vec());
    let mut s = LineSplitter::default();
    for chunk in data.chunks(7) {
        s.push(chunk, &mut w);
    }
    s.finish(&mut w);
    let (out, outcome) = w.finish();
    if let Outcome::Ok(written) = outcome {
        assert_eq!(written.size, out.len() as u64);
        assert!(!out.contains(&0));
        for (i, &b) in out.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(i.checked_sub(1).and_then(|j| out.get(j)), Some(&b'\r'));
            }
            if b == b'\r' {
                assert_eq!(out.get(i + 1), Some(&b'\n'));
            }
        }
    }
});
