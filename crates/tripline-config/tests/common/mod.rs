//! Helpers shared by the integration tests: load one in-memory `mesh.yaml`.

use tripline_config::{load, Diagnostic, LoadOptions, Loaded, Severity, Source};

pub fn src(text: &str) -> Vec<Source> {
    vec![Source { name: "mesh.yaml".into(), text: text.into() }]
}

/// Loads `text`, which must be valid (the errors are shown otherwise).
pub fn ok(text: &str) -> Loaded {
    match load(&src(text), &LoadOptions::default()) {
        Ok(l) => l,
        Err(d) => panic!("{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")),
    }
}

/// The errors of `text`, which must be refused.
pub fn errors(text: &str) -> Vec<Diagnostic> {
    let d = load(&src(text), &LoadOptions::default()).expect_err("config must be refused");
    d.into_iter().filter(|d| d.severity == Severity::Error).collect()
}

/// The one error of `text`, as the CLI prints it.
pub fn the_error(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e[0].to_string()
}
