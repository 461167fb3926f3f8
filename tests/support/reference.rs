//! Finds the reference JavaScript mesh (the `mesh/` folder of bgoldmann/Raise-The-OpenClaw)
//! and the npm packages it needs, for tests that run it beside meshd with `node`.
//!
//! The reference is not on npm and CI has no GitHub access, so it is found through the
//! environment:
//!
//! * `MESHD_REFERENCE_DIR`: a directory holding `mesh/`;
//! * `MESHD_REFERENCE_GIT`: a bare git repository of it; its `HEAD` is materialized once
//!   (`git archive HEAD mesh | tar -x`) into a cache under the target directory, keyed by the
//!   commit.
//!
//! npm packages are installed once per package list into a cache beside it
//! (`npm install`, through the ordinary registry client) and handed to `node` as
//! `NODE_PATH`. When something is missing (neither variable, no `node`, no `npm`, no
//! network), the test skips: [`Skip`] says what to set or install, and the caller prints it.
//!
//! Self-contained on purpose (std only), so any test file can include it with
//! `#[path = "support/reference.rs"] mod reference;`.
#![allow(dead_code)] // each test uses its own part

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a test that needs the reference cannot run here, and what would make it run.
#[derive(Debug)]
pub struct Skip(pub String);

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}

impl Skip {
    /// Prints the reason where `cargo test` shows it (stderr of the test, and with
    /// `--nocapture` at once).
    pub fn report(&self, test: &str) {
        eprintln!("{test}: {self}");
    }
}

/// The variables that locate the reference, named in every skip message.
pub const VARIABLES: &str = "MESHD_REFERENCE_DIR (a directory holding mesh/) or \
                             MESHD_REFERENCE_GIT (a bare git repository of \
                             bgoldmann/Raise-The-OpenClaw)";

/// Where the caches go: under the target directory, so `cargo clean` removes them.
fn cache_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reference")
}

/// The directory holding the reference's `mesh/` folder.
pub fn locate() -> Result<PathBuf, Skip> {
    if let Some(dir) = non_empty_var("MESHD_REFERENCE_DIR") {
        let dir = PathBuf::from(dir);
        return match dir.join("mesh").is_dir() {
            true => Ok(dir),
            false => Err(Skip(format!(
                "MESHD_REFERENCE_DIR={} holds no mesh/ folder",
                dir.display()
            ))),
        };
    }
    if let Some(git) = non_empty_var("MESHD_REFERENCE_GIT") {
        return materialize(Path::new(&git));
    }
    Err(Skip(format!(
        "the reference JavaScript mesh was not found: set {VARIABLES}"
    )))
}

fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// `HEAD`'s `mesh/` of the bare repository `git`, extracted once per commit.
fn materialize(git: &Path) -> Result<PathBuf, Skip> {
    let head = output(
        Command::new("git")
            .arg("--git-dir")
            .arg(git)
            .args(["rev-parse", "HEAD"]),
    )
    .map_err(|error| Skip(format!("MESHD_REFERENCE_GIT={}: {error}", git.display())))?;
    let dir = cache_root().join(format!("mesh-{}", head.trim()));
    if dir.join("mesh").is_dir() {
        return Ok(dir);
    }
    // Extracted beside, then renamed: a test killed half-way leaves no half tree behind.
    let partial = cache_root().join(format!("partial-{}-{}", head.trim(), std::process::id()));
    std::fs::create_dir_all(&partial).map_err(|e| Skip(format!("{}: {e}", partial.display())))?;
    let archive = Command::new("sh")
        .arg("-c")
        .arg("git --git-dir \"$1\" archive HEAD mesh | tar -x -C \"$2\"")
        .arg("sh")
        .arg(git)
        .arg(&partial)
        .status();
    match archive {
        Ok(status) if status.success() && partial.join("mesh").is_dir() => {}
        other => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(Skip(format!(
                "could not extract mesh/ from MESHD_REFERENCE_GIT={} ({other:?})",
                git.display()
            )));
        }
    }
    if std::fs::rename(&partial, &dir).is_err() {
        // Another test extracted it first.
        let _ = std::fs::remove_dir_all(&partial);
    }
    Ok(dir)
}

/// A `node_modules` folder holding `packages` (npm specs such as `better-sqlite3@12`),
/// installed once and reused; `probe` is a script `node` must run successfully with it (a
/// native module that did not build fails here rather than in the test).
pub fn node_modules(packages: &[&str], probe: &str) -> Result<PathBuf, Skip> {
    output(Command::new("node").arg("--version"))
        .map_err(|error| Skip(format!("node is not available ({error})")))?;
    let name: String = packages
        .join("+")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let prefix = cache_root().join(format!("npm-{name}"));
    let modules = prefix.join("node_modules");
    if runs(&modules, probe) {
        return Ok(modules);
    }
    std::fs::create_dir_all(&prefix).map_err(|e| Skip(format!("{}: {e}", prefix.display())))?;
    let install = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--prefix",
        ])
        .arg(&prefix)
        .args(packages)
        .stdin(Stdio::null())
        .output();
    match install {
        Ok(out) if out.status.success() && runs(&modules, probe) => Ok(modules),
        Ok(out) => Err(Skip(format!(
            "npm could not install {} (no network?): {}",
            packages.join(" "),
            last_line(&String::from_utf8_lossy(&out.stderr))
        ))),
        Err(error) => Err(Skip(format!(
            "npm is not available to install {} ({error})",
            packages.join(" ")
        ))),
    }
}

/// Whether `node` runs `probe` with `modules` as `NODE_PATH`.
fn runs(modules: &Path, probe: &str) -> bool {
    modules.is_dir()
        && Command::new("node")
            .env("NODE_PATH", modules)
            .args(["-e", probe])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
}

fn output(command: &mut Command) -> Result<String, String> {
    let out = command.output().map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(last_line(&String::from_utf8_lossy(&out.stderr)).to_string()),
    }
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rfind(|line| !line.trim().is_empty())
        .unwrap_or("")
}
