//! Any bytes as a config file: loading must return diagnostics or a plan, never panic or hang;
//! and a reload, which takes the documents that did not change from the load before
//! (`DocumentCache`), must give what a fresh load of the same text gives (the plan, the
//! warnings, or the errors with their positions), cold, warm, and with every document moved
//! down a line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tripline_config::{load, load_reusing, Diagnostic, DocumentCache, LoadOptions, Loaded, Source};

/// What a load gave, comparable.
fn seen(loaded: Result<Loaded, Vec<Diagnostic>>) -> Result<(String, Vec<Diagnostic>), Vec<Diagnostic>> {
    loaded.map(|l| (format!("{:?}", l.plan), l.warnings))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let opts = LoadOptions::default();
    let source = |text: &str| [Source { name: "fuzz.yaml".into(), text: text.to_string() }];
    let fresh = load(&source(text), &opts);
    if let Err(diags) = &fresh {
        // Every diagnostic must be printable (the CLI prints them all).
        for d in diags {
            let _ = d.to_string();
        }
    }
    let fresh = seen(fresh);
    let mut cache = DocumentCache::default();
    for _ in 0..2 {
        assert_eq!(seen(load_reusing(&source(text), &opts, &mut cache)), fresh, "a reload of the same text");
    }
    let moved = format!("# moved\n{text}");
    let fresh = seen(load(&source(&moved), &opts));
    assert_eq!(
        seen(load_reusing(&source(&moved), &opts, &mut cache)),
        fresh,
        "a reload with every line moved"
    );
});
