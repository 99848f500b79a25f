//! Records the git commit the binary is built from (for `--version`):
//! `RELAY_GIT_COMMIT` from the environment if set (a container build
//! passes it in), else `git rev-parse --short HEAD`, else "unknown" (a
//! source tarball has no git).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=RELAY_GIT_COMMIT");
    let commit = std::env::var("RELAY_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=RELAY_GIT_COMMIT={commit}");
    // A new commit moves the worktree's HEAD log; a checkout moves HEAD.
    for path in ["HEAD", "logs/HEAD"] {
        if let Some(p) =
            git(&["rev-parse", "--git-path", path]).filter(|p| std::path::Path::new(p).exists())
        {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
