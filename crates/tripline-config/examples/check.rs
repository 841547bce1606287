//! `cargo run -p tripline-config --example check -- FILE...`: prints diagnostics (dev aid).
fn main() {
    let paths: Vec<std::path::PathBuf> = std::env::args().skip(1).map(Into::into).collect();
    let sources = match tripline_config::read_sources(&paths) {
        Ok(s) => s,
        Err(d) => {
            d.iter().for_each(|d| println!("{d}"));
            return;
        }
    };
    match tripline_config::load(&sources, &Default::default()) {
        Ok(l) => {
            l.warnings.iter().for_each(|d| println!("{d}"));
            println!("OK: {} listeners, {} clusters", l.plan.listeners.len(), l.plan.clusters.len());
        }
        Err(d) => d.iter().for_each(|d| println!("{d}")),
    }
}
