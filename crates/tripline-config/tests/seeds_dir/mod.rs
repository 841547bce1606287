//! Where the brief's seed configs are, for this crate's seed tests and the binary's `validate`
//! end-to-end test (which includes this file by path).

use std::path::PathBuf;

/// `$TRIPLINE_SHARED/examples/seeds`; by default the `shared` directory next to the checkout.
/// `.ci/run` sets the variable for a clone made elsewhere.
pub fn seeds_dir() -> PathBuf {
    let dir = std::env::var_os("TRIPLINE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
        .join("examples/seeds");
    assert!(
        dir.is_dir(),
        "no seed configs in {}: set TRIPLINE_SHARED to the directory that holds examples/seeds",
        dir.display()
    );
    dir
}
