//! deploy/: the systemd unit passes `systemd-analyze verify` (with its
//! ExecStart pointing at the built binary and its man page where `man`
//! finds it), where systemd-analyze is installed; deploy/check.sh also
//! runs the container image's build steps.

use std::process::Command;

#[test]
fn the_systemd_unit_verifies() {
    let root = env!("CARGO_MANIFEST_DIR");
    let unit = std::fs::read_to_string(format!("{root}/deploy/bitstream-relay.service")).unwrap();
    for hardening in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "LimitNOFILE=",
        "ProtectSystem=strict",
    ] {
        assert!(unit.contains(hardening), "{hardening}");
    }
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if !analyze.is_ok_and(|o| o.status.success()) {
        // Straight to fd 2: the test harness captures eprintln!.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: systemd-analyze is not installed, the unit was not verified"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("relay-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bitstream-relay.service");
    let bin = env!("CARGO_BIN_EXE_bitstream-relay");
    std::fs::write(&path, unit.replace("/usr/local/bin/bitstream-relay", bin)).unwrap();
    // Documentation=man:bitstream-relay(1) is checked too: the page the
    // binary prints, where `man` looks for it.
    std::fs::create_dir_all(dir.join("man1")).unwrap();
    let page = Command::new(bin).arg("man").output().unwrap();
    assert!(page.status.success());
    std::fs::write(dir.join("man1/bitstream-relay.1"), page.stdout).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", &dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // verify exits 0 on some warnings; none about this unit are expected.
    let about_unit: Vec<_> = err
        .lines()
        .filter(|l| l.contains("bitstream-relay.service"))
        .collect();
    assert!(about_unit.is_empty(), "{about_unit:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}
