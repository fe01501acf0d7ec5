//! Errors an admin meets at a bad moment name the file, say what is wrong and give the
//! command that fixes it, with the contract's exit code: one test per typical failure, run
//! on copies of the fixture spool.

use std::path::Path;
use std::time::Duration;

mod support;
use support::cli::{fixture_copy, run, Run};

/// Subcommands that read a whole store.
const READERS: &[&[&str]] = &[
    &["mbcheck"],
    &["quota"],
    &["quota", "-f"],
    &["reconstruct", "user.alice"],
    &["singleinstance-dedupe", "-n"],
];

fn assert_err(r: &Run, code: i32, needles: &[&str]) {
    assert_eq!(r.code, code, "{}", r.describe());
    for n in needles {
        assert!(r.stderr.contains(n), "stderr lacks {n:?}\n{}", r.describe());
    }
}

#[test]
fn missing_imapd_conf_names_the_file_and_the_flag() {
    for words in READERS {
        let r = run(words, Some(Path::new("/nonexistent/imapd.conf")), &[], &[]);
        assert_err(
            &r,
            2,
            &[
                "cyrkit: error: cannot read configuration file /nonexistent/imapd.conf",
                "cyrkit: fix: name the imapd.conf your Cyrus uses with `-C FILE`",
            ],
        );
    }
}

#[test]
fn damaged_mailboxes_db_points_at_reconstruct_m() {
    let (_tmp, root) = fixture_copy("legacy", "err-db");
    let db = root.join("conf/mailboxes.db");
    std::fs::write(&db, b"garbage\n").unwrap();
    let conf = root.join("imapd.conf");
    let fix = format!("`cyrkit reconstruct -m -C {}` writes it", conf.display());
    for words in READERS.iter().filter(|w| w != &&["quota"]) {
        let r = run(words, Some(&conf), &[], &[]);
        assert_err(&r, 3, &[&format!("error: {}: twoskip", db.display()), &fix]);
    }
    // ...and the fix it names works.
    let r = run(&["reconstruct", "-m"], Some(&conf), &[], &[]);
    assert_eq!(r.code, 0, "{}", r.describe());
    assert_eq!(run(&["mbcheck"], Some(&conf), &[], &[]).code, 0);
}

#[test]
fn missing_mailboxes_db_points_at_reconstruct_m() {
    let (_tmp, root) = fixture_copy("legacy", "err-nodb");
    let db = root.join("conf/mailboxes.db");
    std::fs::remove_file(&db).unwrap();
    let r = run(&["mbcheck"], Some(&root.join("imapd.conf")), &[], &[]);
    assert_err(
        &r,
        3,
        &[
            &db.display().to_string(),
            "not found",
            "cyrkit reconstruct -m",
        ],
    );
}

/// A mailboxes.db the user cannot read (run as `nobody` when the tests run as root).
#[test]
fn unreadable_mailboxes_db_says_whom_to_run_as() {
    if !nix::unistd::Uid::effective().is_root() || !Path::new("/usr/sbin/runuser").exists() {
        eprintln!("skipped: needs root and runuser to run cyrkit as another user");
        return;
    }
    let (tmp, root) = fixture_copy("legacy", "err-perm");
    use std::os::unix::fs::PermissionsExt;
    for d in [tmp.path(), &root, &root.join("conf")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(
        root.join("imapd.conf"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let db = root.join("conf/mailboxes.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = std::process::Command::new("/usr/sbin/runuser")
        .args([
            "-u",
            "nobody",
            "--",
            env!("CARGO_BIN_EXE_cyrkit"),
            "mbcheck",
            "-C",
        ])
        .arg(root.join("imapd.conf"))
        .output()
        .unwrap();
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_err(
        &r,
        3,
        &[
            &format!("{}: cannot read", db.display()),
            "ermission denied",
            "fix: run cyrkit as root or as the user Cyrus runs as",
        ],
    );
}

#[test]
fn unknown_mailbox_names_the_database_and_how_to_adopt() {
    let (_tmp, root) = fixture_copy("legacy", "err-nomb");
    let conf = root.join("imapd.conf");
    let db = root.join("conf/mailboxes.db");
    for words in [&["mbcheck"][..], &["reconstruct"]] {
        let r = run(words, Some(&conf), &["user.nobody"], &[]);
        assert_err(
            &r,
            3,
            &[
                &format!("mailbox user.nobody does not exist in {}", db.display()),
                &format!(
                    "`cyrkit reconstruct -r -f -C {} user` adopts it",
                    conf.display()
                ),
            ],
        );
    }
}

#[test]
fn missing_partition_line_says_what_to_add() {
    let (_tmp, root) = fixture_copy("legacy", "err-part");
    let conf = root.join("imapd.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, text.replace("partition-default: spool\n", "")).unwrap();
    let r = run(&["reconstruct"], Some(&conf), &["user.alice"], &[]);
    assert_err(
        &r,
        3,
        &["no partition-default in imapd.conf (add a `partition-default: DIRECTORY` line"],
    );
}

#[test]
fn missing_configdirectory_names_the_option() {
    let (_tmp, root) = fixture_copy("legacy", "err-confdir");
    let conf = root.join("imapd.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        text.replace("configdirectory: conf", "configdirectory: nope"),
    )
    .unwrap();
    let r = run(&["quota"], Some(&conf), &[], &[]);
    assert_err(
        &r,
        3,
        &[&format!("check `configdirectory` in {}", conf.display())],
    );
}

/// A lock another process holds past the (here shortened) timeout: exit 75 and how to find
/// the holder.
#[test]
fn held_lock_exits_75_and_names_the_lock() {
    let (_tmp, root) = fixture_copy("legacy", "err-lock");
    let conf = root.join("imapd.conf");
    let db = root.join("conf/mailboxes.db");
    // fcntl locks belong to this test process; the cyrkit child cannot take them.
    let _held = cyrkit::spool::lock::lock_path(
        &db,
        cyrkit::spool::lock::LockMode::Exclusive,
        Duration::from_secs(5),
    )
    .unwrap();
    for words in [
        &["mbcheck"][..],
        &["quota", "-f"],
        &["reconstruct", "-m"],
        &["reconstruct", "user.alice"],
        &["singleinstance-dedupe"],
    ] {
        let r = run(words, Some(&conf), &[], &[("CYRKIT_LOCK_TIMEOUT", "1")]);
        assert_err(
            &r,
            75,
            &[
                &format!("{}: lock held by another process", db.display()),
                &format!("fuser -v {}", db.display()),
            ],
        );
    }
}

#[test]
fn bad_imapd_conf_line_is_named_with_its_line_number() {
    let (_tmp, root) = fixture_copy("legacy", "err-confline");
    let conf = root.join("imapd.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("virtdomains: maybe\n");
    std::fs::write(&conf, text).unwrap();
    let r = run(&["mbcheck"], Some(&conf), &[], &[]);
    assert_err(
        &r,
        2,
        &[
            &format!("{}:", conf.display()),
            "`virtdomains`",
            "cyrkit: fix: correct the line named above",
        ],
    );
}
