//! The README's tour runs as written (on a private copy instead of /tmp/tour), and so does
//! its legacy → uuid recipe, against Cyrus 3.6.1's own `relocate_by_id`.

use std::path::Path;
use std::process::Command;

mod support;
use support::cyrus::{relink_hardlinks, require_cyrus, CyrusInstance};

/// The body of the first ```sh block between `<!-- START -->` and `<!-- END -->`.
fn sh_block(readme: &str, start: &str, end: &str) -> String {
    let from = readme
        .find(start)
        .unwrap_or_else(|| panic!("marker {start}"));
    let to = readme[from..]
        .find(end)
        .unwrap_or_else(|| panic!("marker {end}"));
    readme[from..from + to]
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block")
        .to_string()
}

#[test]
fn readme_tour_runs_and_ends_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let body = sh_block(&readme, "<!-- tour -->", "<!-- /tour -->");
    let tmp = tempfile::tempdir().unwrap();
    let tour = tmp.path().join("tour");
    let script = body
        .replace("/tmp/tour", tour.to_str().unwrap())
        .replace("cargo run -q --", env!("CARGO_BIN_EXE_cyrkit"));
    assert!(!script.contains("cargo run"), "{script}");
    let out = Command::new("bash")
        .arg("-ec")
        .arg(&script)
        .current_dir(root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tour failed:\n{stdout}\n{stderr}");
    // The first mbcheck found the damage, reconstruct rebuilt both files, quota fixed usage.
    assert!(
        stdout.contains("mbcheck: problems found (exit 1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("user.alice rewrote cache for 1"),
        "{stdout}"
    );
    assert!(stdout.contains("user.bob uid 1 found - adding"), "{stdout}");
    assert!(
        stderr.contains("user.bob: STORAGE usage was 1, now"),
        "{stderr}"
    );
    // ...and the last mbcheck (the script's last command, under -e) exited 0.
    assert!(tour.join("spool/b/user/bob/cyrus.index").exists());
}

/// The recipe as printed, with the instance's imapd.conf for /etc/imapd.conf: Cyrus's
/// relocate_by_id moves alice to the uuid layout, cyrkit finds the store clean.
#[test]
fn readme_legacy_to_uuid_recipe_runs_against_real_cyrus() {
    if !require_cyrus() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let body = sh_block(&readme, "<!-- recipe: legacy-uuid -->", "<!-- /recipe -->");
    let cy = CyrusInstance::spool_copy_offline(&root.join("fixtures/legacy")).unwrap();
    relink_hardlinks(cy.root()).unwrap();
    support::cyrus::chown_cyrus(cy.root()).unwrap();
    let conf = cy.conf_path();
    let script = body
        .replace("/etc/imapd.conf", conf.to_str().unwrap())
        .replace("cyrkit ", &format!("{} ", env!("CARGO_BIN_EXE_cyrkit")));
    let out = Command::new("bash")
        .arg("-exc")
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "recipe failed:\n{stdout}\n{stderr}");
    // relocate_by_id really moved alice: her INBOX is under uuid/, bob's is where it was.
    let spool = cy.spool_dir();
    assert!(!spool.join("a/user/alice").exists(), "{stdout}");
    assert!(spool.join("b/user/bob/cyrus.header").exists());
    let moved = walkdir::WalkDir::new(spool.join("uuid"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name() == "cyrus.header")
        .count();
    assert!(moved >= 7, "{moved} mailboxes under uuid/\n{stdout}");
}
