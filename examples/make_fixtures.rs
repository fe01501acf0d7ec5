//! Builds the test fixtures with a real Cyrus IMAP 3.6: `cargo run --example make_fixtures --
//! OUTDIR` (see `scripts/make-fixtures` and `fixtures/README.md`).
//!
//! For each fixture it starts a private Cyrus instance (tests/support/cyrus.rs), fills it over
//! IMAP and LMTP, records what Cyrus itself reports (`expected/`), stops it and copies the mail
//! store (config directory and spool, without runtime state) into OUTDIR/<name>/ with an
//! `imapd.conf` whose paths are relative to that directory. Message contents are fixed; dates
//! given by LMTP delivery (Received, internaldate) and uidvalidities vary from run to run.

#[path = "../tests/support/cyrus.rs"]
mod cyrus;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use cyrus::{copy_tree, crlf, CyrusInstance, CyrusOptions, ImapClient, HARDLINKS_FILE};

fn main() -> Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fixtures".into()));
    ensure!(
        Path::new(cyrus::CYRUS_BIN).join("master").exists(),
        "Cyrus is not installed in {}",
        cyrus::CYRUS_BIN
    );
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "run as root (Cyrus runs as the cyrus user)"
    );
    fs::create_dir_all(&out)?;
    let version = cyrus_version();
    build_legacy(&out.join("legacy"), &version).context("legacy fixture")?;
    build_uuid(&out.join("uuid"), &version).context("uuid fixture")?;
    build_index_versions(&out.join("index-versions")).context("index-versions fixture")?;
    eprintln!("fixtures written to {}", out.display());
    Ok(())
}

fn cyrus_version() -> String {
    std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "cyrus-imapd"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

// ------------------------------------------------------------------------------------------
// Messages. `%%XX` stands for the byte 0xXX (tabs, 8-bit bytes); `\n` becomes CRLF.

fn msg(text: &str) -> Vec<u8> {
    let mut raw = Vec::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"%%") {
            if let Some(v) = text
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                raw.push(v);
                i += 4;
                continue;
            }
        }
        raw.push(b[i]);
        i += 1;
    }
    crlf(&raw)
}

const SIMPLE: &str = r#"Return-Path: <sender@example.org>
Received: from mx.example.org (mx.example.org [192.0.2.1])
%%09by mail.example.com with ESMTP id 12345; Tue, 14 Mar 2023 10:00:00 +0100
From: Alice Sender <sender@Example.ORG>
To: alice@example.com
Cc: "Bob, Jr." <bob@example.com>, carol@example.com
Subject: Simple test message
Date: Tue, 14 Mar 2023 10:00:00 +0100
Message-ID: <simple-1@example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii
X-Mailer: TestMailer 1.0
References: <a@example.org> <b@example.org>

Hello all,
this is a simple message delivered to three people at once.
.a line starting with a dot
"#;

const RFC2047: &str = r#"From: =?ISO-8859-1?Q?Andr=E9_Pirard?= <PIRARD@vm1.ulg.ac.be>
To: =?UTF-8?B?SsO8cmdlbiBNw7xsbGVy?= <jm@example.de>, "=?utf-8?q?Fran=C3=A7ois?=" <f@example.fr>
Subject: =?UTF-8?B?SGVsbG8gV8O2cmxk?= =?UTF-8?Q?_and_more?= plain tail
Date: Wed, 15 Mar 2023 23:59:59 -0800
Message-ID: <rfc2047@example.org>
In-Reply-To: <simple-1@example.org>
Reply-To: replies@example.org
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: 8bit

J%%C3%%BCrgen says hi.
"#;

const NOHEADERS: &str = "X-Nothing: here\n\nbody without any of the usual headers\n";

const NESTED: &str = r#"From: nest@example.org
To: alice@example.com
Subject: nested multipart
Date: Thu, 16 Mar 2023 08:15:30 +0000
Message-ID: <nested@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"
Content-Language: en, de-CH

This is the preamble.
--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Gr=FC=DFe
--inner
Content-Type: text/html; charset=UTF-8
Content-Transfer-Encoding: base64

PGI+SGk8L2I+Cg==
--inner--
--outer
Content-Type: application/octet-stream; name="data.bin"
Content-Disposition: attachment;
 filename*0="very long ";
 filename*1="name.bin"
Content-Transfer-Encoding: base64
Content-ID: <part3@example.org>
Content-Description: some binary data

AAECAwQFBgcICQ==
--outer
Content-Type: text/plain; charset="x-unknown-cs"

unknown charset part
--outer--
This is the epilogue.
"#;

const RFC822: &str = r#"From: fwd@example.org
To: bob@example.com, carol@example.com
Subject: Fwd: forwarded
Date: Fri, 17 Mar 2023 12:00:00 +0200
Message-ID: <fwd@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain

see attached
--b1
Content-Type: message/rfc822
Content-Disposition: inline

From: inner@example.org
To: someone@example.net
Subject: inner message
Date: Mon, 13 Mar 2023 09:00:00 -0500
Message-ID: <inner@example.org>
Content-Type: multipart/mixed; boundary="b2"

--b2
Content-Type: text/plain; charset=utf-8

inner text
--b2
Content-Type: image/png; name=x.png
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--b2--

--b1
Content-Type: message/rfc822

From: leaf@example.org
Subject: leaf rfc822 (non-multipart)

leaf body
--b1--
"#;

const ADDRESSES: &str = r#"From: (comment only) Joe Q. Public <john.q.public@example.com>
To: Mary Smith <mary@x.test>, jdoe@example.org, Who? <one@y.test>
Cc: <boss@nil.test>, "Giant; \"Big\" Box" <sysservices@example.net>
Bcc: undisclosed-recipients:;
Subject: Re: address parsing, with "quotes" and %percent and \backslash
Date: 21 Nov 97 09:55:06 GMT
Message-ID: <5678.21-Nov-1997@example.com>
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII; format=flowed

Address test.
"#;

const GROUPS: &str = r#"From: Pete <pete@silly.example>
To: A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;
Cc: Undisclosed recipients:;
Sender: @route1,@route2:user@host.test
Subject: group
  syntax and folded
%%09subject
Date: Thu,
      13
        Feb
          1969
      23:32
               -0330 (Newfoundland Time)
Message-ID:              <testabcd.1234@silly.test>

Testing.
"#;

const EIGHT_BIT: &str = r#"From: Ren%%E9 <rene@example.org>
To: alice@example.com
Subject: raw 8bit caf%%E9 subject
Date: Sat, 18 Mar 2023 00:00:00 +0000
Message-ID: <8bit@example.org>

8bit body caf%%E9
"#;

const DIGEST: &str = r#"From: digest@example.org
To: alice@example.com
Subject: digest
Date: Mon, 20 Mar 2023 00:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/digest; boundary="dd"

--dd

From: d1@example.org
Subject: digest part 1

part one
--dd
Content-Type: text/plain

explicitly typed
--dd--
"#;

const NO_BOUNDARY: &str = r#"From: bad@example.org
Subject: multipart without boundary
Content-Type: multipart/mixed

no boundary here
"#;

const ALTERNATIVE: &str = r#"From: News <news@example.org>
To: alice@example.com, carol@example.com
Subject: =?iso-8859-1?q?Weekly_caf=E9_news?=
Date: Tue, 21 Mar 2023 07:00:00 +0100
Message-ID: <weekly@example.org>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="alt-1"

--alt-1
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Caf=E9 news this week: a soft=
 line break and an =3D sign.
--alt-1
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

<html><body><p>Caf=C3=A9 news</p></body></html>
--alt-1--
"#;

const ATTACHMENT: &str = r#"From: Reports <reports@example.org>
To: alice@example.com, bob@example.com
Subject: Quarterly report (attachments)
Date: Wed, 22 Mar 2023 16:30:00 -0400
Message-ID: <report@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="mix-42"

--mix-42
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Please find the report attached. Gr=C3=BC=C3=9Fe
--mix-42
Content-Type: application/pdf; name="report.pdf"
Content-Disposition: attachment; filename="report.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSL0ZpbHRlci9GbGF0ZURl
Y29kZT4+CnN0cmVhbQp4nDPQM1Qo5ypUMFAw0DMwslAoSuUKUQjhMlAwBEIjhaBULgDyXQXNCmVu
ZHN0cmVhbQplbmRvYmoKCjMgMCBvYmoKNDkKZW5kb2JqCgp0cmFpbGVyCjw8L1NpemUgNT4+CiUl
RU9GCg==
--mix-42
Content-Type: text/csv; charset=us-ascii; name*=utf-8''%E2%82%AC%20rates.csv
Content-Disposition: attachment; filename*=utf-8''%E2%82%AC%20rates.csv

currency,rate
EUR,1.00
--mix-42--
"#;

const PARAMS: &str = r#"From: params@example.org
To: carol@example.com
Subject: RFC 2231 parameters
Date: Thu, 23 Mar 2023 10:10:10 +0000
Message-ID: <params@example.org>
MIME-Version: 1.0
Content-Type: text/plain; title*0*=us-ascii'en'This%20is; title*1*=%20%2A%2A%2Afun; title*2=" stuff"
Content-Disposition: inline; filename="a\"b.txt"; size=12

x
"#;

const PLAIN_BOB: &str = r#"From: second@example.org
To: bob@example.com
Subject: to be expunged
Date: Tue, 21 Mar 2023 00:00:00 +0000
Message-ID: <expungeme@example.org>

bye
"#;

/// IMAP APPEND edge cases (`shared/fixtures-notes/append_edge.py`).
const EDGE: &[&str] = &[
    "X-Only: x\n\nbody\n",
    r#"Subject: first subject
Subject:second subject
From:a@b.test
From: "Last, First" <c@d.test>
Date:   Mon, 1 May 2023 12:00:00 +0000  
Content-Type: text/plain (a comment); charset = "utf8" ; format="fixed"
Message-Id: <dup@test>

x
"#,
    r#"Subject: =?utf-8?q?a?= =?utf-8?q?b?=  c =?unknown-cs?q?zz?= d=?utf-8?q?e?=f =?utf-8?b?!!!?= =?iso-8859-1?q?caf=E9?=
From: =?utf-8?q?=22Quoted=22_Name?= <q@n.test>, =?iso-2022-jp?B?GyRCJUYlOSVIGyhC?= <jp@n.test>
To: undisclosed-recipients:;
Cc: "\"escaped\" name" <e@n.test>, plain@n.test (comment name)
Message-ID: <enc@test>

x
"#,
    "Subject: headers only\nFrom: h@o.test\n",
    "Subject: no trailing newline\nFrom: n@t.test\n\nlast line without CRLF",
    r#"Subject: nested rfc822
From: n@r.test
Content-Type: message/rfc822

Subject: level 1
From: l1@r.test
Content-Type: message/rfc822

Subject: level 2
From: l2@r.test

deep body
"#,
    r#"Subject: boundary trap
From: b@t.test
Content-Type: multipart/mixed; boundary="abc"

--abcdef not a boundary?
--abc  
Content-Type: text/plain; charset=us-ascii

part one
--abc
Content-Type: text/plain; charset=ISO-8859-15

part two
--abc--
"#,
    r#"Subject: folded cached
From: f@c.test
REFERENCES: <a@x>
  <b@x>
%%09<c@x>
x-mailer: lower-case name
X-Not-Cached: yes
In-Reply-To: <irt@x>

x
"#,
    r#"Subject: deep
From: d@e.test
Content-Type: multipart/mixed; boundary=L1

--L1
Content-Type: multipart/related; boundary=L2

--L2
Content-Type: multipart/alternative; boundary=L3

--L3
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

aGVs bG8K
!!==
--L3
Content-Type: text/html
Content-Transfer-Encoding: quoted-printable

<p>soft=
break =3D trailing  =20
</p>
--L3--
--L2
Content-Type: image/gif
Content-Transfer-Encoding: x-uuencode

begin 644 x
--L2--
--L1--
"#,
];

/// A small numbered message for filler appends.
fn note(n: u32, subject: &str) -> Vec<u8> {
    msg(&format!(
        "From: notes{n}@example.org\nTo: owner@example.com\nSubject: {subject} #{n}\n\
         Date: Mon, 1 May 2023 12:00:{:02} +0000\nMessage-ID: <note{n}@example.org>\n\
         MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\nnote body {n}\n",
        n % 60
    ))
}

// ------------------------------------------------------------------------------------------
// Populating helpers

fn deliver(cy: &CyrusInstance, rcpts: &[&str], text: &str) -> Result<()> {
    let mut l = cy.lmtp()?;
    let replies = l.deliver("sender@example.org", rcpts, &msg(text))?;
    l.quit()?;
    ensure!(
        replies.len() == rcpts.len() && replies.iter().all(|r| r.is_positive()),
        "LMTP delivery to {rcpts:?} failed: {replies:?}"
    );
    Ok(())
}

/// Creates `names` as the admin and gives the admin full rights on `admin_appends` (shared
/// mailboxes: the admin needs `i` to APPEND there).
fn create_mailboxes(a: &mut ImapClient, names: &[&str], admin_appends: &[&str]) -> Result<()> {
    for mb in names {
        a.create(mb)?;
    }
    for mb in admin_appends {
        a.setacl(mb, "cyrus", "lrswipkxtecda")?;
    }
    Ok(())
}

fn append(c: &mut ImapClient, mbox: &str, flags: &[&str], date: &str, raw: &[u8]) -> Result<()> {
    c.append(mbox, flags, Some(date), raw)
        .with_context(|| format!("APPEND to {mbox}"))?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Legacy fixture

fn build_legacy(out: &Path, version: &str) -> Result<()> {
    let opts = CyrusOptions::default();
    let mut cy = CyrusInstance::start(&opts)?;
    let mut a = cy.imap_admin()?;
    let names = [
        "user.alice",
        "user.alice.Sent",
        "user.alice.Sub",
        "user.alice.Sub.Deep",
        "user.alice.Old Mail",
        "user.alice.Entw&APw-rfe", // "Entwürfe" in modified UTF-7
        "user.alice.to-do",
        "user.alice.Trash",
        "user.bob",
        "user.bob.Archive",
        "user.carol",
        "user.carol.Lists",
        "shared",
        "shared.folder",
    ];
    create_mailboxes(&mut a, &names, &["shared", "shared.folder"])?;
    a.setacl("user.alice.Sent", "bob", "lrs")?;
    a.setacl("user.carol.Lists", "alice", "lrsw")?;
    a.setacl("shared", "anyone", "lr")?;
    a.setacl("shared.folder", "anyone", "lrs")?;
    a.setacl("shared.folder", "alice", "lrswipkxtecd")?;
    a.setacl("shared.folder", "bob", "lrswi")?;
    a.setacl("shared.folder", "carol", "lrs")?;
    a.setquota("user.alice", &[("STORAGE", 10000), ("MESSAGE", 500)])?;
    a.setquota("user.alice.Sub", &[("STORAGE", 2000), ("MESSAGE", 20)])?;
    a.setquota("user.bob", &[("STORAGE", 5000), ("MESSAGE", 100)])?;
    a.setquota("user.carol", &[("STORAGE", 20000)])?;
    a.setquota("shared.folder", &[("STORAGE", 1000), ("MESSAGE", 50)])?;

    // LMTP: single and multi-recipient deliveries (multi = single-instance hard links).
    deliver(&cy, &["alice", "bob", "carol"], SIMPLE)?;
    for m in [
        RFC2047,
        NOHEADERS,
        ADDRESSES,
        GROUPS,
        EIGHT_BIT,
        DIGEST,
        NO_BOUNDARY,
    ] {
        deliver(&cy, &["alice"], m)?;
    }
    deliver(&cy, &["alice", "bob"], NESTED)?;
    deliver(&cy, &["bob", "carol"], RFC822)?;
    deliver(&cy, &["alice", "carol"], ALTERNATIVE)?;
    deliver(&cy, &["alice", "bob"], ATTACHMENT)?;
    deliver(&cy, &["carol"], PARAMS)?;
    deliver(&cy, &["bob"], PLAIN_BOB)?;
    deliver(
        &cy,
        &["bob"],
        &String::from_utf8_lossy(&note(90, "also expunged")),
    )?;

    // Owner APPENDs with flags and fixed internaldates.
    let mut al = cy.imap_login("alice")?;
    let d = "01-Jan-2020 12:34:56 +0200";
    append(
        &mut al,
        "INBOX.Sent",
        &["\\Seen", "\\Answered"],
        d,
        &msg(ADDRESSES),
    )?;
    append(
        &mut al,
        "INBOX.Sent",
        &["\\Seen"],
        "02-Jan-2020 08:00:00 +0000",
        &note(1, "sent"),
    )?;
    append(
        &mut al,
        "INBOX.Sent",
        &["\\Seen", "$Forwarded"],
        "03-Jan-2020 09:00:00 -0500",
        &note(2, "sent"),
    )?;
    append(
        &mut al,
        "INBOX.Sent",
        &[],
        "04-Jan-2020 10:00:00 +0100",
        &note(3, "sent"),
    )?;
    append(
        &mut al,
        "INBOX.Sub",
        &["\\Flagged"],
        "05-Feb-2021 11:11:11 +0000",
        &note(4, "sub"),
    )?;
    append(
        &mut al,
        "INBOX.Sub",
        &["\\Seen", "project-x"],
        "06-Feb-2021 11:11:11 +0000",
        &note(5, "sub"),
    )?;
    for n in 6..9 {
        append(
            &mut al,
            "INBOX.Sub.Deep",
            &["\\Seen"],
            "07-Mar-2022 00:00:00 +0000",
            &note(n, "deep"),
        )?;
    }
    append(
        &mut al,
        "INBOX.Old Mail",
        &["\\Seen"],
        "01-Jan-2001 00:00:01 +0000",
        &note(9, "old"),
    )?;
    append(
        &mut al,
        "INBOX.Old Mail",
        &["\\Seen", "\\Answered"],
        "31-Dec-1999 23:59:59 -0800",
        &note(10, "old"),
    )?;
    append(
        &mut al,
        "INBOX.Entw&APw-rfe",
        &["\\Draft"],
        "10-Apr-2023 10:00:00 +0200",
        &note(11, "draft"),
    )?;
    append(
        &mut al,
        "INBOX.Entw&APw-rfe",
        &["\\Draft", "\\Seen"],
        "11-Apr-2023 10:00:00 +0200",
        &msg(EDGE[1]),
    )?;
    append(
        &mut al,
        "INBOX.to-do",
        &["$Label1", "NonJunk"],
        "12-Apr-2023 10:00:00 +0000",
        &note(12, "todo"),
    )?;
    append(
        &mut al,
        "INBOX.to-do",
        &["\\Flagged", "$Label2"],
        "13-Apr-2023 10:00:00 +0000",
        &note(13, "todo"),
    )?;
    append(
        &mut al,
        "INBOX.Trash",
        &["\\Seen", "\\Deleted"],
        "14-Apr-2023 10:00:00 +0000",
        &note(14, "trash"),
    )?;
    append(
        &mut al,
        "INBOX.Trash",
        &["\\Seen"],
        "15-Apr-2023 10:00:00 +0000",
        &note(15, "trash"),
    )?;
    append(
        &mut al,
        "shared.folder",
        &["\\Seen"],
        "16-Apr-2023 10:00:00 +0000",
        &note(16, "shared by alice"),
    )?;
    al.select("INBOX")?;
    al.store("1", "+FLAGS", &["\\Seen", "\\Flagged"])?;
    al.store("2", "+FLAGS", &["\\Answered", "$Forwarded", "Junk"])?;
    al.store("3", "+FLAGS", &["\\Draft", "NonJunk"])?;
    al.store("4", "+FLAGS", &["\\Deleted"])?; // deleted, never expunged
    al.store("5", "+FLAGS", &["\\Seen", "$Label1", "project-x"])?;
    al.store("6:8", "+FLAGS", &["\\Seen"])?;
    al.logout()?;

    let mut bob = cy.imap_login("bob")?;
    for (i, m) in EDGE.iter().enumerate() {
        let flags: &[&str] = match i % 3 {
            0 => &["\\Seen"],
            1 => &["\\Seen", "\\Flagged"],
            _ => &[],
        };
        append(
            &mut bob,
            "INBOX.Archive",
            flags,
            "02-May-2023 10:00:00 +0000",
            &msg(m),
        )?;
    }
    bob.select("INBOX")?;
    bob.store("1", "+FLAGS", &["\\Seen"])?;
    bob.store("5:6", "+FLAGS", &["\\Deleted", "\\Seen"])?;
    bob.expunge()?; // delayed expunge: records stay in cyrus.index, files stay
    bob.logout()?;

    let mut carol = cy.imap_login("carol")?;
    for n in 17..20 {
        append(
            &mut carol,
            "INBOX.Lists",
            &[],
            "20-May-2023 10:00:00 +0000",
            &note(n, "list"),
        )?;
    }
    carol.select("INBOX")?;
    carol.store("1:2", "+FLAGS", &["\\Seen"])?;
    carol.logout()?;

    append(
        &mut a,
        "shared",
        &[],
        "17-Apr-2023 10:00:00 +0000",
        &note(20, "shared top"),
    )?;
    append(
        &mut a,
        "shared.folder",
        &["\\Seen", "$Label1"],
        "18-Apr-2023 10:00:00 +0000",
        &msg(SIMPLE),
    )?;
    append(
        &mut a,
        "shared.folder",
        &[],
        "19-Apr-2023 10:00:00 +0000",
        &msg(EDGE[2]),
    )?;
    a.logout()?;
    // delete_mode: delayed turns this into DELETED.user.alice.Trash.<hex time>. The owner
    // deletes it: the admin has no `x` right on user mailboxes.
    let mut al = cy.imap_login("alice")?;
    al.delete("INBOX.Trash")?;
    al.logout()?;

    export(&mut cy, out, version, "legacy")
}

// ------------------------------------------------------------------------------------------
// UUID fixture

fn build_uuid(out: &Path, version: &str) -> Result<()> {
    let opts = CyrusOptions {
        legacy_dirs: false,
        fulldirhash: true,
        unixhierarchysep: true,
        virtdomains: "userid".into(),
        defaultdomain: Some("example.net".into()),
        mboxlist_db: "skiplist".into(),
        quota_db: "twoskip".into(),
        ..CyrusOptions::default()
    };
    let mut cy = CyrusInstance::start(&opts)?;
    let mut a = cy.imap_admin()?;
    let names = [
        "user/dave",
        "user/dave/Sent",
        "user/dave/Trash",
        "user/john.doe",
        "user/john.doe/Sent.Items",
        "user/alice@example.com",
        "user/alice/Archive@example.com",
        "user/bob@example.com",
        "user/carol@example.org",
        "user/carol/Work@example.org",
        "user/john.doe@example.org",
        "shared",
        "shared/sub",
        "shared@example.org",
    ];
    create_mailboxes(
        &mut a,
        &names,
        &["shared", "shared/sub", "shared@example.org"],
    )?;
    a.setacl("shared", "anyone", "lrs")?;
    a.setacl("shared/sub", "john.doe", "lrswi")?;
    a.setacl("shared@example.org", "carol@example.org", "lrswipkxtecd")?;
    a.setacl("user/alice/Archive@example.com", "bob@example.com", "lr")?;
    a.setquota("user/john.doe", &[("STORAGE", 1000), ("MESSAGE", 100)])?;
    a.setquota("user/dave", &[("MESSAGE", 50)])?;
    a.setquota("user/alice@example.com", &[("STORAGE", 2000)])?;
    a.setquota(
        "user/carol@example.org",
        &[("STORAGE", 3000), ("MESSAGE", 10)],
    )?;

    deliver(
        &cy,
        &["john.doe", "dave", "alice@example.com", "carol@example.org"],
        SIMPLE,
    )?;
    deliver(&cy, &["john.doe@example.org", "bob@example.com"], NESTED)?;
    deliver(&cy, &["alice@example.com"], RFC2047)?;
    deliver(&cy, &["dave", "john.doe"], ATTACHMENT)?;
    deliver(&cy, &["carol@example.org"], ALTERNATIVE)?;
    deliver(&cy, &["john.doe"], EIGHT_BIT)?;

    let d = "03-May-2023 10:00:00 +0000";
    let mut jd = cy.imap_login("john.doe")?;
    append(
        &mut jd,
        "INBOX/Sent.Items",
        &["\\Seen"],
        d,
        &note(30, "sent"),
    )?;
    append(
        &mut jd,
        "INBOX/Sent.Items",
        &["\\Seen", "\\Answered", "$Forwarded"],
        d,
        &msg(ADDRESSES),
    )?;
    jd.select("INBOX")?;
    jd.store("1", "+FLAGS", &["\\Seen", "\\Flagged"])?;
    jd.store("3", "+FLAGS", &["\\Deleted"])?;
    jd.expunge()?;
    jd.logout()?;
    let mut dave = cy.imap_login("dave")?;
    append(&mut dave, "INBOX/Sent", &["\\Seen"], d, &note(31, "sent"))?;
    append(&mut dave, "INBOX/Trash", &["\\Seen"], d, &note(32, "trash"))?;
    dave.select("INBOX")?;
    dave.store("2", "+FLAGS", &["$Label1", "\\Answered"])?;
    dave.logout()?;
    let mut al = cy.imap_login("alice@example.com")?;
    append(
        &mut al,
        "INBOX/Archive",
        &["\\Seen", "project-x"],
        d,
        &note(33, "archive"),
    )?;
    append(&mut al, "INBOX/Archive", &["\\Draft"], d, &msg(EDGE[2]))?;
    al.logout()?;
    let mut ca = cy.imap_login("carol@example.org")?;
    append(&mut ca, "INBOX/Work", &["\\Flagged"], d, &note(34, "work"))?;
    append(
        &mut ca,
        "shared",
        &["\\Seen"],
        d,
        &note(35, "domain shared"),
    )?;
    ca.logout()?;
    append(&mut a, "shared", &[], d, &note(36, "shared"))?;
    append(&mut a, "shared/sub", &["\\Seen"], d, &msg(PARAMS))?;
    a.logout()?;
    let mut dave = cy.imap_login("dave")?;
    dave.delete("INBOX/Trash")?;
    dave.logout()?;

    export(&mut cy, out, version, "uuid")
}

// ------------------------------------------------------------------------------------------
// Index versions

fn build_index_versions(out: &Path) -> Result<()> {
    let mut cy = CyrusInstance::start(&CyrusOptions::default())?;
    let mut a = cy.imap_admin()?;
    a.create("user.ver")?;
    a.logout()?;
    let mut v = cy.imap_login("ver")?;
    let flag_sets: [&[&str]; 5] = [
        &["\\Seen"],
        &["\\Seen", "\\Answered", "$Forwarded"],
        &["\\Flagged"],
        &["\\Draft", "project-x"],
        &[],
    ];
    for (i, flags) in flag_sets.iter().enumerate() {
        let n = 40 + i as u32;
        let raw = if i == 1 {
            msg(NESTED)
        } else {
            note(n, "version test")
        };
        append(
            &mut v,
            "INBOX",
            flags,
            &format!("0{}-Jun-2023 10:00:00 +0000", i + 1),
            &raw,
        )?;
    }
    v.logout()?;
    cy.stop()?;

    if out.exists() {
        fs::remove_dir_all(out)?;
    }
    let mbox_dir = cy.spool_dir().join("v/user/ver");
    for ver in [16u32, 15, 14, 13, 12, 17] {
        let o = cy.run_tool("reconstruct", &["-V", &ver.to_string(), "user.ver"])?;
        ensure!(
            o.status.success(),
            "reconstruct -V {ver}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let dst = out.join(format!("v{ver}"));
        fs::create_dir_all(&dst)?;
        for f in ["cyrus.header", "cyrus.index", "cyrus.cache"] {
            fs::copy(mbox_dir.join(f), dst.join(f))?;
        }
        let ex = tool_text(&cy, "mbexamine", &["user.ver"])?;
        let root = cy.root().to_string_lossy().into_owned();
        fs::write(dst.join("mbexamine.txt"), ex.replace(&root, "<instance>"))?;
        if ver == 17 {
            for e in fs::read_dir(&mbox_dir)? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with('.') && name.trim_end_matches('.').parse::<u32>().is_ok() {
                    fs::copy(e.path(), dst.join(&name))?;
                }
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Export

/// The owner of a mailbox (admin-namespace name) and the name the owner sees it under; `None`
/// for shared and deleted mailboxes.
fn owner_view(name: &str, sep: char) -> Option<(String, String)> {
    let rest = name.strip_prefix("user")?.strip_prefix(sep)?;
    let (path, domain) = match rest.rsplit_once('@') {
        Some((p, d)) => (p, Some(d)),
        None => (rest, None),
    };
    let (local, sub) = match path.split_once(sep) {
        Some((l, s)) => (l, Some(s)),
        None => (path, None),
    };
    let user = match domain {
        Some(d) => format!("{local}@{d}"),
        None => local.to_string(),
    };
    let view = match sub {
        Some(s) => format!("INBOX{sep}{s}"),
        None => "INBOX".to_string(),
    };
    Some((user, view))
}

/// The owner of a delayed-delete mailbox (`DELETED.user.alice.Trash.HEX`): the admin has no
/// rights on it, its owner keeps them.
fn deleted_owner(name: &str, sep: char) -> Option<String> {
    let rest = name.strip_prefix("DELETED")?.strip_prefix(sep)?;
    owner_view(rest, sep).map(|(user, _)| user)
}

/// One message of the IMAP dump. `\Recent` is left out: it is session state derived from the
/// index header's `recentuid`, not a stored flag.
fn message_json(m: &cyrus::FetchedMessage) -> Value {
    let flags: Vec<&String> = m
        .flags
        .iter()
        .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
        .collect();
    json!({"uid": m.uid, "flags": flags, "internaldate": m.internaldate, "size": m.size})
}

/// Per mailbox: counters from STATUS and UID/FLAGS/INTERNALDATE/RFC822.SIZE as the owner (or
/// the admin, for shared and deleted mailboxes) sees them.
fn imap_dump(cy: &CyrusInstance, sep: char) -> Result<Value> {
    let mut admin = cy.imap_admin()?;
    let mut names = admin.list("", "*")?;
    names.sort();
    let mut boxes = Vec::new();
    for name in names {
        let (login, view) = owner_view(&name, sep)
            .or_else(|| deleted_owner(&name, sep).map(|o| (o, name.clone())))
            .unwrap_or(("cyrus".into(), name.clone()));
        let mut c = cy.imap_login(&login)?;
        // A delayed-delete mailbox answers STATUS but not EXAMINE, even for its owner.
        let (st, msgs) = match c.examine_status(&view) {
            Ok(st) => {
                let msgs = c.fetch_summary()?.iter().map(message_json).collect();
                (st, Value::Array(msgs))
            }
            Err(e) => {
                eprintln!("note: {name}: STATUS only ({e})");
                let st = c
                    .status(&view)
                    .with_context(|| format!("STATUS {view} as {login}"))?;
                (st, Value::Null)
            }
        };
        c.logout()?;
        boxes.push(json!({
            "name": name, "login": login, "examined_as": view,
            "uidvalidity": st.uidvalidity, "uidnext": st.uidnext,
            "highestmodseq": st.highestmodseq, "exists": st.messages,
            "mailboxid": st.mailboxid, "messages": msgs,
        }));
    }
    admin.logout()?;
    Ok(json!({ "mailboxes": boxes }))
}

/// Runtime state that is not part of a mail store.
fn skip_in_conf(rel: &Path) -> bool {
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    matches!(
        first.as_deref(),
        Some("db" | "socket" | "proc" | "lock" | "log")
    ) || rel.extension().is_some_and(|e| e == "pid")
}

fn copy_filtered(src: &Path, dst: &Path, rel: &Path) -> Result<()> {
    for e in fs::read_dir(src.join(rel))? {
        let e = e?;
        let r = rel.join(e.file_name());
        if skip_in_conf(&r) {
            continue;
        }
        if e.file_type()?.is_dir() {
            copy_filtered(src, dst, &r)?;
        } else {
            fs::create_dir_all(dst.join(rel))?;
            fs::copy(e.path(), dst.join(&r))?;
        }
    }
    Ok(())
}

/// Groups of files (relative to `root`) that are hard links of one another.
fn hardlink_groups(root: &Path) -> Result<Vec<Vec<String>>> {
    let mut by_inode: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let m = fs::symlink_metadata(e.path())?;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && m.nlink() > 1 {
                let rel = e.path().strip_prefix(root)?.to_string_lossy().into_owned();
                by_inode.entry((m.dev(), m.ino())).or_default().push(rel);
            }
        }
    }
    let mut groups: Vec<Vec<String>> = by_inode
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    Ok(groups)
}

fn tool_text(cy: &CyrusInstance, tool: &str, args: &[&str]) -> Result<String> {
    let o = cy.run_tool(tool, args)?;
    if !o.status.success() {
        bail!(
            "{tool} {args:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.stderr.is_empty() {
        text.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    Ok(text)
}

fn export(cy: &mut CyrusInstance, out: &Path, version: &str, what: &str) -> Result<()> {
    let sep = if cy.conf_value("unixhierarchysep") == Some("yes") {
        '/'
    } else {
        '.'
    };
    let dump = imap_dump(cy, sep)?;
    cy.stop()?;

    if out.exists() {
        fs::remove_dir_all(out)?;
    }
    let expected = out.join("expected");
    fs::create_dir_all(&expected)?;
    fs::write(
        expected.join("imap.json"),
        serde_json::to_string_pretty(&dump)? + "\n",
    )?;
    fs::write(
        expected.join("ctl_mboxlist-d.json"),
        tool_text(cy, "ctl_mboxlist", &["-d"])?,
    )?;
    fs::write(expected.join("quota.txt"), tool_text(cy, "quota", &[])?)?;
    fs::write(
        expected.join("quota-J.json"),
        tool_text(cy, "quota", &["-J"])?,
    )?;
    // Prints one line per mailbox name and nothing else when all is well.
    fs::write(
        expected.join("reconstruct-n.txt"),
        tool_text(cy, "reconstruct", &["-n"])?,
    )?;
    fs::write(expected.join("cyrus-version.txt"), format!("{version}\n"))?;

    let root = cy.root().to_path_buf();
    let links: String = hardlink_groups(&root)?
        .iter()
        .map(|g| g.join("\t") + "\n")
        .collect();
    fs::write(out.join(HARDLINKS_FILE), links)?;

    let mut conf = format!(
        "# cyrkit fixture `{what}`: mail-store keys only; paths are relative to this directory.\n\
         # Made by scripts/make-fixtures with Cyrus {version}.\n"
    );
    conf.push_str(&cyrus::render_imapd_conf(&cy.relative_store_keys()));
    fs::write(out.join("imapd.conf"), conf)?;
    copy_filtered(&cy.config_dir(), &out.join("conf"), Path::new(""))?;
    copy_tree(&cy.spool_dir(), &out.join("spool"))?;
    for key in ["metapartition-default", "archivepartition-default"] {
        if let Some(dir) = cy.conf_value(key) {
            let rel = Path::new(dir).strip_prefix(&root)?;
            copy_tree(Path::new(dir), &out.join(rel))?;
        }
    }
    eprintln!("{what}: written to {}", out.display());
    Ok(())
}
