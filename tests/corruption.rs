//! Damaged input, in CI: a small corruption campaign (the one `scripts/corruption-campaign`
//! runs at scale, same code: `examples/corruption_campaign.rs`) with a fixed seed, failing on
//! any panic, signal, timeout, unexpected exit code, silent exit 2/3, change made by a read-only
//! command, or lost message file — and on any case where `reconstruct` left work for a second
//! run. Then one regression test per bug the campaign found.

#[path = "../examples/corruption_campaign.rs"]
#[allow(dead_code)]
mod campaign;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Fixed so a CI failure names a case anyone can re-run:
/// `corruption_campaign --bin target/debug/cyrkit --seed 20261126 --case N --keep`.
const CI_SEED: u64 = 20261126;
/// Small enough for about 20 s in a debug build on 2 cores.
const CI_CASES: u64 = 80;

#[test]
fn corruption_campaign_finds_no_violation() {
    let mut cfg = campaign::Config::new(PathBuf::from(env!("CARGO_BIN_EXE_cyrkit")));
    cfg.seed = CI_SEED;
    cfg.count = CI_CASES;
    cfg.threads = 2;
    // Debug builds are slower; a hang is still caught.
    cfg.timeout = Duration::from_secs(60);
    let report = campaign::run(&cfg).expect("campaign ran");
    let mut text = Vec::new();
    report.print(&mut text).unwrap();
    let text = String::from_utf8_lossy(&text);
    println!("{text}");
    assert_eq!(report.cases, CI_CASES);
    assert_eq!(report.runs, CI_CASES * campaign::STEPS.len() as u64);
    // Every kind of damage happened to every kind of file at least once... over the seed;
    // at least several distinct combinations must have been exercised.
    assert!(report.damages.len() >= 20, "too few damage kinds:\n{text}");
    assert!(report.failures.is_empty(), "violations:\n{text}");
    assert!(
        report.not_idempotent.is_empty(),
        "reconstruct left work for a second run:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Regression tests for what the campaign found

fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("cyrkit-corruption-")
        .tempdir()
        .unwrap();
    let root = tmp.path().join(name);
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name),
        &root,
    );
    (tmp, root)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

fn cyrkit(root: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cyrkit"))
        .args(args)
        .arg("-C")
        .arg(root.join("imapd.conf"))
        .arg("--no-progress")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Campaign seed 1 case 266: user.bob uid 5 is expunged (delayed expunge) and its file was
/// truncated. reconstruct marks the record unlinked and keeps the file; the next run saw the
/// same mismatch, said "already expunged, unlinking" again and gave the record a new modseq,
/// on every run.
#[test]
fn expunged_record_with_damaged_file_is_unlinked_once() {
    let (_tmp, root) = copy_fixture("legacy");
    let msg = root.join("spool/b/user/bob/5.");
    let data = std::fs::read(&msg).unwrap();
    std::fs::write(&msg, &data[..data.len() / 2]).unwrap();

    let (code, out, err) = cyrkit(&root, &["reconstruct", "user.bob"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("user.bob uid 5 already expunged, unlinking"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&msg).unwrap(),
        &data[..data.len() / 2],
        "the file is kept"
    );

    let (code, out, err) = cyrkit(&root, &["reconstruct", "-n", "--json", "user.bob"]);
    let doc: serde_json::Value = serde_json::from_str(&out).expect(&err);
    assert_eq!(doc["summary"]["mailboxes_changed"], 0, "{out}");
    assert!(!out.contains("unlinking"), "{out}");
    assert_eq!(code, 0, "{out}{err}");
}
