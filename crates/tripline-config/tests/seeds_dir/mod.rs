//! Where the brief's seed configs are, for this crate's seed tests and the binary's `validate`
//! end-to-end test (which includes this file by path).
//!
//! The seeds live outside the repository (`../shared/examples/seeds`, beside the clone), so a
//! clone on its own does not have them. A test that needs them then says it was skipped (on
//! stderr) and passes, so the README's `cargo test
//! --workspace` works in a bare clone; under CI (`CI=true`, which `.ci/run` sets) they are
//! required and their absence fails the test.

use std::io::Write;
use std::path::PathBuf;

/// `$TRIPLINE_SHARED/examples/seeds`, by default the `shared` directory beside the checkout.
fn location() -> PathBuf {
    let beside_the_clone = || {
        // CARGO_MANIFEST_DIR is <clone>/crates/<crate>: three levels up holds the clone.
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        manifest.ancestors().nth(3).unwrap_or(manifest).join("shared")
    };
    std::env::var_os("TRIPLINE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(beside_the_clone)
        .join("examples/seeds")
}

/// Whether the seeds are required: `CI=true` (or `1`).
fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The seed directory, or `None` (after saying so on stderr) when it is absent and the seeds
/// are not required. Absent under `CI=true`, it panics with where it looked and how to fix it.
pub fn seeds_dir() -> Option<PathBuf> {
    let dir = location();
    if dir.is_dir() {
        return Some(dir);
    }
    let test = std::thread::current().name().unwrap_or("a seed test").to_string();
    let hint = format!(
        "no seed configs in {}: put the brief's `shared` directory beside the clone, or set TRIPLINE_SHARED to the directory that holds examples/seeds",
        dir.display()
    );
    assert!(!required(), "{test}: {hint} (CI=true requires them)");
    // Straight to the process's stderr: the test harness captures `eprintln!` and shows it
    // only for failing tests, and a skip must be seen in a normal `cargo test` run.
    let _ = writeln!(std::io::stderr(), "skipped {test}: {hint}");
    None
}
