//! The command line: `check-config` on good and bad files.

use std::process::Command;

fn check_config(path: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callcode"))
        .arg("check-config")
        .arg(path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run callcode");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_sandbox_config_checks_out() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sandbox.toml");
    let (ok, stdout, stderr) = check_config(&path);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("ok (1 accounts, 2 routes, 1 backends)"),
        "{stdout}"
    );
}

#[test]
fn a_broken_config_names_the_key_and_line_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sandbox.toml"),
    )
    .unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("price = \"1.50\""))
        .unwrap()
        + 1;
    let broken = text.replacen("price = \"1.50\"", "price = \"one fifty\"", 1);
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, broken).unwrap();
    let (ok, _, stderr) = check_config(&path);
    assert!(!ok);
    assert!(stderr.contains(&format!("line {line}")), "{stderr}");
    assert!(stderr.contains("price"), "{stderr}");

    let missing_sounds = text.replacen("sounds = \"sounds\"", "sounds = \"/nonexistent\"", 1);
    std::fs::write(&path, missing_sounds).unwrap();
    let (ok, _, stderr) = check_config(&path);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent"), "{stderr}");
}
