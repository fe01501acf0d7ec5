//! Generates a legacy-layout store of N mailboxes (empty, with real `cyrus.header` and
//! `cyrus.index` written by cyrkit's own writers) and a twoskip mailboxes.db for it, for
//! `scripts/bench-reconstruct-m`. Ten mailboxes per user: INBOX and nine folders.
//!
//! Usage: `cargo run --release --example bench_reconstruct_m -- OUTDIR [N]`

use std::path::{Path, PathBuf};

use cyrkit::format::header::{Acl, AclEntry, HeaderFormat, MailboxHeader, MbType};
use cyrkit::format::index::{self, IndexHeader};
use cyrkit::spool::names::{MboxName, NameConfig};
use cyrkit::spool::paths::{legacy_rel_path, HashMode};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().ok_or("usage: bench_reconstruct_m OUTDIR [N]")?);
    let n: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let spool = out.join("spool");
    std::fs::create_dir_all(out.join("conf"))?;
    std::fs::write(
        out.join("imapd.conf"),
        "configdirectory: conf\npartition-default: spool\ndefaultpartition: default\n\
         mailbox_legacy_dirs: yes\nhashimapspool: yes\nunixhierarchysep: no\n\
         mboxlist_db: twoskip\n",
    )?;
    let nc = NameConfig {
        unixhierarchysep: false,
        ..NameConfig::default()
    };
    let hash = HashMode {
        hashimapspool: true,
        fulldirhash: false,
    };
    for i in 0..n {
        let user = format!("u{:05}", i / 10);
        let internal = match i % 10 {
            0 => format!("user.{user}"),
            f => format!("user.{user}.Folder {f}"),
        };
        let name = MboxName::from_internal(internal.as_bytes(), &nc)?;
        let dir = spool.join(legacy_rel_path(&name, hash));
        write_mailbox(&dir, &internal, &user, i)?;
    }
    eprintln!("{n} mailboxes under {}", spool.display());
    Ok(())
}

fn write_mailbox(dir: &Path, internal: &str, user: &str, i: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let header = MailboxHeader {
        format: HeaderFormat::Dlist,
        mbtype: MbType::EMAIL_LEGACY,
        name: Some(internal.as_bytes().to_vec()),
        uniqueid: Some(format!("bench{i:019}").into_bytes()),
        quotaroot: None,
        acl: Some(Acl {
            entries: vec![AclEntry {
                identifier: user.as_bytes().to_vec(),
                rights: b"lrswipkxtecdan".to_vec(),
            }],
        }),
        user_flags: Vec::new(),
        trailing: Vec::new(),
    };
    let hbytes = header
        .write()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let ih = IndexHeader {
        uidvalidity: 1_700_000_000 + i as u32,
        highestmodseq: 1 + (i % 7) as u64,
        createdmodseq: 1,
        header_file_crc: cyrkit::format::header::header_file_crc(&hbytes),
        ..IndexHeader::default()
    };
    let ibytes = index::write_index(&ih, &[], index::DEFAULT_VERSION)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    std::fs::write(dir.join("cyrus.header"), hbytes)?;
    std::fs::write(dir.join("cyrus.index"), ibytes)?;
    Ok(())
}
