//! Records the git commit the binary is built from, for `tokenmeter --version`: `TOKENMETER_GIT_COMMIT` when the builder sets it (an image
//! build from a source tarball), else `git rev-parse`, else "unknown". Never fails the build.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TOKENMETER_GIT_COMMIT");
    let commit = std::env::var("TOKENMETER_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TOKENMETER_GIT_COMMIT={}", commit.trim());
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

/// The short commit; and the files whose change means another commit, so that cargo runs this
/// again after a commit or checkout. (No `-dirty` mark: cargo would not rerun this when a
/// file is edited, so the mark would go stale.)
fn git_commit() -> Option<String> {
    let head = git(&["rev-parse", "--git-path", "HEAD"])?;
    println!("cargo:rerun-if-changed={head}");
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(r) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={r}");
        }
    }
    if let Some(packed) = git(&["rev-parse", "--git-path", "packed-refs"]) {
        println!("cargo:rerun-if-changed={packed}");
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}
