//! Any bytes as a config file: loading must return diagnostics or a plan, never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tripline_config::{load, LoadOptions, Source};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let sources = [Source { name: "fuzz.yaml".into(), text: text.to_string() }];
    if let Err(diags) = load(&sources, &LoadOptions::default()) {
        // Every diagnostic must be printable (the CLI prints them all).
        for d in &diags {
            let _ = d.to_string();
        }
    }
});
