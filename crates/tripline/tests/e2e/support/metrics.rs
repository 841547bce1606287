//! Reading Prometheus text (`/metrics`). Shared with the proxy's in-process tests
//! (`crates/tripline-proxy/tests/support`), which render the same text without the admin API.

/// Sum of Prometheus samples named exactly `name` whose label set contains every pair.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
        if &line[..name_end] != name {
            continue;
        }
        let (label_text, rest) = if line[name_end..].starts_with('{') {
            match line[name_end..].find('}') {
                Some(close) => (&line[name_end + 1..name_end + close], &line[name_end + close + 1..]),
                None => continue,
            }
        } else {
            ("", &line[name_end..])
        };
        if !labels.iter().all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\""))) {
            continue;
        }
        if let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            sum += value;
        }
    }
    sum
}
