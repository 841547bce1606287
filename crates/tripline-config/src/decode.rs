//! A typed reader over the positioned tree: every problem becomes a [`Diagnostic`] with the
//! file, the node's line and column, the resource and the field path. Decoders never fail
//! hard: they report and return `None`, so one pass finds every mistake in a file.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::diag::{Diagnostic, Severity};
use crate::yaml::{Kind, Node, Pos};

/// Where diagnostics go while decoding one resource.
pub struct Cx<'a> {
    pub file: &'a str,
    /// `VirtualService/backend`
    pub resource: String,
    pub diags: &'a mut Vec<Diagnostic>,
}

/// What a mapping may hold.
///
/// Every field Tripline reads but does not act on is in one of two lists, by one rule: a field
/// may be ignored (a warning) only if ignoring it cannot change which requests a route takes
/// or what they get; otherwise it is refused (an error) until it is implemented. Both kinds
/// are still returned by [`Fields::get`], so a decoder may validate them.
#[derive(Clone, Copy)]
pub struct Schema {
    /// Used in messages: "not part of Istio's OutlierDetection".
    pub name: &'static str,
    pub known: &'static [&'static str],
    /// Not implemented yet, and ignoring them would change routing or responses: an error
    /// `` `<path>` is not implemented yet; <what to do> `` for each `(field, what to do)`.
    pub refused: &'static [(&'static str, &'static str)],
    /// Not implemented, and harmless to ignore: a warning `` `<path>` is ignored: <why> `` for
    /// each `(field, why ignoring it changes nothing a request gets)`.
    pub ignored: &'static [(&'static str, &'static str)],
    /// The mapping's fields are conditions that narrow what a route takes (a request match):
    /// an unknown one (an error, as everywhere) would widen the match, and its message says so.
    pub conditions: bool,
    /// Extra words for an unknown field (e.g. where Envoy-only fields belong).
    pub note: fn(&str) -> Option<&'static str>,
}

impl Schema {
    /// A schema of known fields only.
    pub const fn new(name: &'static str, known: &'static [&'static str]) -> Schema {
        Schema { name, known, refused: &[], ignored: &[], conditions: false, note: no_note }
    }

    /// With fields that are errors until implemented, each with what to do instead.
    pub const fn refusing(self, refused: &'static [(&'static str, &'static str)]) -> Schema {
        Schema { refused, ..self }
    }

    /// With fields that are ignored with a warning, each with why that is harmless.
    pub const fn ignoring(self, ignored: &'static [(&'static str, &'static str)]) -> Schema {
        Schema { ignored, ..self }
    }

    /// Its fields are match conditions: the error for an unknown one says it widens the match.
    pub const fn of_conditions(self) -> Schema {
        Schema { conditions: true, ..self }
    }

    pub const fn with_note(self, note: fn(&str) -> Option<&'static str>) -> Schema {
        Schema { note, ..self }
    }

    /// Every field name the schema recognises, for "did you mean".
    fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        let listed = self.refused.iter().chain(self.ignored).map(|(f, _)| *f);
        self.known.iter().copied().chain(listed)
    }
}

pub fn no_note(_: &str) -> Option<&'static str> {
    None
}

/// `a.b` from `a` and `b`. (Built by hand: it runs for every field of every resource, and
/// `format!` was a few percent of a 10,000-service reload.)
pub fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        return field.to_string();
    }
    let mut joined = String::with_capacity(path.len() + 1 + field.len());
    joined.push_str(path);
    joined.push('.');
    joined.push_str(field);
    joined
}

/// `a[3]`
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The entries of a mapping, checked against a schema.
pub struct Fields<'n> {
    pub node: &'n Node,
    pub path: &'n str,
    entries: Vec<(&'n str, &'n Node)>,
}

impl<'n> Fields<'n> {
    pub fn get(&self, name: &str) -> Option<(&'n Node, String)> {
        self.entries.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v, join(self.path, name)))
    }

    /// A field that is present and not null.
    pub fn value(&self, name: &str) -> Option<(&'n Node, String)> {
        self.get(name).filter(|(n, _)| !n.is_null())
    }

    pub fn has(&self, name: &str) -> bool {
        self.value(name).is_some()
    }
}

impl<'a> Cx<'a> {
    pub fn report(&mut self, severity: Severity, pos: Pos, path: &str, message: impl Into<String>) {
        let path = if path.is_empty() { self.resource.clone() } else { format!("{}: {path}", self.resource) };
        self.diags.push(Diagnostic {
            severity,
            file: self.file.to_string(),
            line: pos.line,
            column: pos.col,
            path,
            message: message.into(),
        });
    }

    pub fn error(&mut self, node: &Node, path: &str, message: impl Into<String>) {
        self.report(Severity::Error, node.pos, path, message);
    }

    pub fn warn(&mut self, node: &Node, path: &str, message: impl Into<String>) {
        self.report(Severity::Warning, node.pos, path, message);
    }

    /// Checks a mapping against its schema: refused fields, duplicate keys and non-string keys
    /// are errors; ignored fields and unknown ones are warnings (unknown ones are errors in a
    /// schema of conditions). Null reads as an empty mapping.
    pub fn fields<'n>(&mut self, node: &'n Node, path: &'n str, schema: &Schema) -> Option<Fields<'n>> {
        let mut fields = Fields { node, path, entries: Vec::new() };
        if node.is_null() {
            return Some(fields);
        }
        let Kind::Map(entries) = &node.kind else {
            self.error(
                node,
                path,
                format!("expected a mapping ({}), found {}", schema.name, node.describe()),
            );
            return None;
        };
        for (key, value) in entries {
            let Some(name) = key.as_scalar() else {
                self.error(key, path, format!("expected a field name, found {}", key.describe()));
                continue;
            };
            // Only a diagnostic needs the field's path: most mappings have none.
            let field_path = || join(path, name);
            if let Some(first) = fields.entries.iter().find(|(k, _)| *k == name) {
                let line = first.1.pos.line;
                self.error(
                    key,
                    &field_path(),
                    format!("duplicate field `{name}` (first given on line {line})"),
                );
                continue;
            }
            if let Some((_, fix)) = schema.refused.iter().find(|(f, _)| *f == name) {
                let field_path = field_path();
                self.error(key, &field_path, format!("`{field_path}` is not implemented yet; {fix}"));
            } else if let Some((_, why)) = schema.ignored.iter().find(|(f, _)| *f == name) {
                let field_path = field_path();
                self.warn(key, &field_path, format!("`{field_path}` is ignored: {why}"));
            } else if !schema.known.contains(&name) {
                let mut msg = format!("unknown field `{name}`");
                let mut notes = Vec::new();
                if let Some(note) = (schema.note)(name) {
                    notes.push(format!("not part of {}; {note}", schema.name));
                } else {
                    notes.push(format!("not part of {}", schema.name));
                }
                if let Some(s) = suggest(name, schema.names()) {
                    notes.push(format!("did you mean `{s}`?"));
                }
                msg += &format!(" ({})", notes.join("; "));
                // An error, never a warning: Tripline cannot know that ignoring a field it does
                // not know (a misspelt `timeout`, a newer Istio field) leaves every request as
                // the author meant.
                msg += if schema.conditions {
                    "; a condition Tripline does not read would widen this match: correct or remove it"
                } else {
                    "; Tripline does not act on it, so what it asks for would not happen: correct or remove it"
                };
                self.error(key, &field_path(), msg);
            }
            fields.entries.push((name, value));
        }
        Some(fields)
    }

    /// Reports `field` missing from a mapping at the mapping's position.
    pub fn required(&mut self, f: &Fields<'_>, field: &str, expected: &str) {
        let path = join(f.path, field);
        self.error(f.node, &path, format!("`{field}` is required: expected {expected}"));
    }

    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.kind {
            Kind::Scalar { text, .. } if !node.is_null() => Some(text.clone()),
            _ => {
                self.error(node, path, format!("expected a string, found {}", node.describe()));
                None
            }
        }
    }

    /// A non-empty string.
    pub fn name(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.error(node, path, "expected a non-empty string");
            return None;
        }
        Some(s)
    }

    /// An integer within `min..=max`. Quoted digits are accepted (protobuf JSON does).
    pub fn int(&mut self, node: &Node, path: &str, min: i64, max: i64) -> Option<i64> {
        let expected = if max == i64::MAX {
            format!("an integer >= {min}")
        } else {
            format!("an integer between {min} and {max}")
        };
        let parsed = match &node.kind {
            Kind::Scalar { text, .. } if !node.is_null() => parse_int(text),
            _ => None,
        };
        match parsed {
            Some(v) if v >= min && v <= max => Some(v),
            _ => {
                self.error(node, path, format!("expected {expected}, found {}", node.describe()));
                None
            }
        }
    }

    pub fn u32(&mut self, node: &Node, path: &str, min: u32) -> Option<u32> {
        self.int(node, path, i64::from(min), i64::from(u32::MAX)).map(|v| v as u32)
    }

    pub fn port(&mut self, node: &Node, path: &str) -> Option<u16> {
        self.int(node, path, 1, 65535).map(|v| v as u16)
    }

    pub fn float(&mut self, node: &Node, path: &str, min: f64, max: f64) -> Option<f64> {
        let parsed = match &node.kind {
            Kind::Scalar { text, .. } => text.trim().parse::<f64>().ok().filter(|v| v.is_finite()),
            _ => None,
        };
        match parsed {
            Some(v) if v >= min && v <= max => Some(v),
            _ => {
                self.error(
                    node,
                    path,
                    format!("expected a number between {min} and {max}, found {}", node.describe()),
                );
                None
            }
        }
    }

    pub fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.as_scalar() {
            Some("true" | "True" | "TRUE") => Some(true),
            Some("false" | "False" | "FALSE") => Some(false),
            _ => {
                self.error(node, path, format!("expected true or false, found {}", node.describe()));
                None
            }
        }
    }

    /// A duration like Istio's (`1s`, `1.5s`, `250ms`, `1m`, `1h`, `100us`, `1m30s`).
    /// `allow_zero` for fields where `0s` means "disabled".
    pub fn duration(&mut self, node: &Node, path: &str, allow_zero: bool) -> Option<Duration> {
        let text = match &node.kind {
            Kind::Scalar { text, .. } if !node.is_null() => text.trim(),
            _ => {
                self.error(
                    node,
                    path,
                    format!("expected a duration like 1.5s or 250ms, found {}", node.describe()),
                );
                return None;
            }
        };
        match parse_duration(text) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.error(node, path, "expected a positive duration like 1.5s or 250ms, found 0");
                None
            }
            Ok(d) => Some(d),
            Err(why) => {
                self.error(
                    node,
                    path,
                    format!("expected a duration like 1.5s or 250ms, found {} ({why})", node.describe()),
                );
                None
            }
        }
    }

    /// One of a fixed set of words; `aliases` map other accepted words to a canonical one.
    pub fn one_of(&mut self, node: &Node, path: &str, allowed: &[&str], extra: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if allowed.contains(&s.as_str()) {
            return Some(s);
        }
        let mut msg = format!("expected one of {}, found {}", allowed.join(", "), node.describe());
        if !extra.is_empty() {
            msg += &format!(" ({extra})");
        }
        self.error(node, path, msg);
        None
    }

    /// A list; null reads as empty. Items come with their paths.
    pub fn list<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Vec<(&'n Node, String)> {
        match &node.kind {
            Kind::Seq(items) => items.iter().enumerate().map(|(i, n)| (n, index(path, i))).collect(),
            _ if node.is_null() => Vec::new(),
            _ => {
                self.error(node, path, format!("expected a list of {what}, found {}", node.describe()));
                Vec::new()
            }
        }
    }

    pub fn strings(&mut self, node: &Node, path: &str) -> Vec<(String, Pos, String)> {
        let mut out = Vec::new();
        for (item, p) in self.list(node, path, "strings") {
            if let Some(s) = self.name(item, &p) {
                out.push((s, item.pos, p));
            }
        }
        out
    }

    /// A mapping of string to string (labels).
    pub fn string_map(&mut self, node: &Node, path: &str) -> BTreeMap<String, String> {
        self.map_of(node, path, "a label name", Self::string)
    }

    /// A mapping of port names to port numbers (a WorkloadEntry's `ports`). Whatever stands
    /// where a number should (a mapping, a list, null, text) gets the port-number message.
    pub fn port_map(&mut self, node: &Node, path: &str) -> BTreeMap<String, u16> {
        self.map_of(node, path, "a port name", |cx, v, p| {
            let port = match &v.kind {
                Kind::Scalar { text, .. } if !v.is_null() => {
                    text.trim().parse::<u16>().ok().filter(|&n| n > 0)
                }
                _ => None,
            };
            if port.is_none() {
                cx.error(v, p, format!("expected a port number between 1 and 65535, found {}", v.describe()));
            }
            port
        })
    }

    /// A mapping of names (`key`: what a name is) to values read by `value`.
    fn map_of<T>(
        &mut self,
        node: &Node,
        path: &str,
        key: &str,
        mut value: impl FnMut(&mut Self, &Node, &str) -> Option<T>,
    ) -> BTreeMap<String, T> {
        let mut out = BTreeMap::new();
        match &node.kind {
            Kind::Map(entries) => {
                for (k, v) in entries {
                    let Some(name) = k.as_scalar() else {
                        self.error(k, path, format!("expected {key}, found {}", k.describe()));
                        continue;
                    };
                    let p = join(path, name);
                    if out.contains_key(name) {
                        self.error(k, &p, format!("duplicate key `{name}`"));
                        continue;
                    }
                    if let Some(val) = value(self, v, &p) {
                        out.insert(name.to_string(), val);
                    }
                }
            }
            _ if node.is_null() => {}
            _ => self.error(
                node,
                path,
                format!("expected a mapping of names to values, found {}", node.describe()),
            ),
        }
        out
    }
}

fn parse_int(text: &str) -> Option<i64> {
    let t = text.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.is_empty() {
        return None;
    }
    t.parse::<i64>().ok()
}

/// Parses a Go/protobuf style duration: one or more `<number><unit>` with units
/// `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`. A unit is required; negatives are refused.
pub fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    if text.is_empty() {
        return Err("empty");
    }
    if text.starts_with('-') {
        return Err("negative");
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err("a number must come before each unit");
        }
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err("a unit is required: ns, us, ms, s, m or h"),
            _ => return Err("unknown unit; use ns, us, ms, s, m or h"),
        };
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| "too large")? };
        let mut part = whole.checked_mul(unit_ns).ok_or("too large")?;
        // Fraction: keep up to 18 digits, enough for nanosecond precision of hours.
        let frac: String = frac.chars().take(18).collect();
        if !frac.is_empty() {
            let digits: u128 = frac.parse().map_err(|_| "bad fraction")?;
            let scale = 10u128.pow(frac.len() as u32);
            part = part.checked_add(digits * unit_ns / scale).ok_or("too large")?;
        }
        total = total.checked_add(part).ok_or("too large")?;
        rest = tail;
    }
    // Cap at ~292 years, far beyond any useful timeout, so Duration math never overflows.
    if total > u128::from(u64::MAX) {
        return Err("too large");
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Formats a duration the way users write them (`1.5s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        "0s".into()
    } else if ns.is_multiple_of(1_000_000_000) {
        format!("{}s", ns / 1_000_000_000)
    } else if ns.is_multiple_of(1_000_000) {
        format!("{}ms", ns / 1_000_000)
    } else if ns.is_multiple_of(1_000) {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

/// The closest known name within edit distance 2 (case differences count as 0).
fn suggest<'s>(name: &str, known: impl Iterator<Item = &'s str>) -> Option<&'s str> {
    let lower = name.to_ascii_lowercase();
    known
        .map(|k| {
            (k, if k.eq_ignore_ascii_case(name) { 0 } else { edit_distance(&lower, &k.to_ascii_lowercase()) })
        })
        .filter(|(_, d)| *d <= 2)
        .min_by_key(|(_, d)| *d)
        .map(|(k, _)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > 2 || a.len() > 64 || b.len() > 64 {
        return usize::MAX;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    #[test]
    fn durations_in_istio_and_go_style() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("1s"), Ok(ms(1000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("1m"), Ok(ms(60_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("0.001s"), Ok(ms(1)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err(), "unit required");
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration("10 s").is_err());
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("99999999999999999999999999999999999999h").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn format_duration_round_trips() {
        for s in ["1s", "1500ms", "250ms", "100us", "7ns", "0s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }

    #[test]
    fn suggestions_catch_typos_and_case() {
        let known = ["timeout", "route", "match"];
        assert_eq!(suggest("timout", known.into_iter()), Some("timeout"));
        assert_eq!(suggest("Route", known.into_iter()), Some("route"));
        assert_eq!(suggest("enforcingConsecutive5xxErrors", known.into_iter()), None);
    }

    const SCHEMA: Schema = Schema::new("Thing", &["a", "b"])
        .refusing(&[("c", "remove it, or use `a`")])
        .ignoring(&[("d", "it only names statistics")]);

    #[test]
    fn fields_report_unknown_refused_ignored_and_duplicate_keys_with_positions() {
        let docs = yaml::parse("a: 1\nbb: 2\nc: 3\na: 4\nd: 5\n").unwrap();
        let mut diags = Vec::new();
        let mut cx = Cx { file: "f.yaml", resource: "Thing/x".into(), diags: &mut diags };
        let f = cx.fields(&docs[0].root, "spec", &SCHEMA).unwrap();
        assert!(f.has("c") && f.has("d"), "refused and ignored fields are still readable");
        let shown: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            shown,
            [
                "error: f.yaml:2:1: Thing/x: spec.bb: unknown field `bb` (not part of Thing; did you mean `b`?); Tripline does not act on it, so what it asks for would not happen: correct or remove it",
                "error: f.yaml:3:1: Thing/x: spec.c: `spec.c` is not implemented yet; remove it, or use `a`",
                "error: f.yaml:4:1: Thing/x: spec.a: duplicate field `a` (first given on line 1)",
                "warning: f.yaml:5:1: Thing/x: spec.d: `spec.d` is ignored: it only names statistics",
            ]
        );
    }

    #[test]
    fn an_unknown_field_among_conditions_is_an_error() {
        let docs = yaml::parse("exct: /a\n").unwrap();
        let mut diags = Vec::new();
        let mut cx = Cx { file: "f.yaml", resource: "Thing/x".into(), diags: &mut diags };
        let conditions = Schema::new("a match", &["exact", "prefix"]).of_conditions();
        cx.fields(&docs[0].root, "uri", &conditions).unwrap();
        let shown: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            shown,
            ["error: f.yaml:1:1: Thing/x: uri.exct: unknown field `exct` (not part of a match; did you mean `exact`?); a condition Tripline does not read would widen this match: correct or remove it"]
        );
    }

    #[test]
    fn wrong_types_are_errors_with_what_was_expected() {
        let docs = yaml::parse("n: [1]\nd: 5\np: 70000\ns: {a: 1}\nb: yes\n").unwrap();
        let root = &docs[0].root;
        let mut diags = Vec::new();
        let mut cx = Cx { file: "f", resource: "R/x".into(), diags: &mut diags };
        assert_eq!(cx.u32(root.get("n").unwrap(), "n", 0), None);
        assert_eq!(cx.duration(root.get("d").unwrap(), "d", false), None);
        assert_eq!(cx.port(root.get("p").unwrap(), "p"), None);
        assert_eq!(cx.string(root.get("s").unwrap(), "s"), None);
        assert_eq!(cx.bool(root.get("b").unwrap(), "b"), None);
        let msgs: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "expected an integer between 0 and 4294967295, found a list",
                "expected a duration like 1.5s or 250ms, found `5` (a unit is required: ns, us, ms, s, m or h)",
                "expected an integer between 1 and 65535, found `70000`",
                "expected a string, found a mapping",
                "expected true or false, found `yes`",
            ]
        );
        assert!(diags.iter().all(|d| d.severity == Severity::Error));
        assert_eq!((diags[1].line, diags[1].column), (2, 4));
    }
}
