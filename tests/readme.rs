//! The README's tour runs as written (on a private copy instead of /tmp/tour).

use std::path::Path;
use std::process::Command;

#[test]
fn readme_tour_runs_and_ends_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme.find("<!-- tour -->").expect("tour marker");
    let end = readme.find("<!-- /tour -->").expect("tour end marker");
    let block = &readme[start..end];
    let body = block
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block in the tour");
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
