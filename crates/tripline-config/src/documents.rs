//! A source's documents parsed and decoded into resources; a large source in two halves on
//! two threads.
//!
//! Why: parsing and decoding were most of a reload (about 1 s of 1.3 s for 10,000 services,
//! 17 MB of YAML, half of it in `saphyr-parser`), and documents do not depend on each other.
//! The halves give the same resources, diagnostics and positions as the whole source read at
//! once; wherever that is not certain, the source is read whole (see [`decode`]).

use std::ops::Range;

use crate::model::Resource;
use crate::yaml::{self, Offset, Part, SyntaxError};
use crate::{resource, Diagnostic, Source};

/// Sources smaller than this are read on one thread: a thread is not worth it.
const HALVES_FROM: usize = 1 << 20;

/// What a source (or a part of one) decoded to.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    /// Its resources in document order, each with how many of `diags` were reported up to
    /// its own decoding included (so that checks across resources can put theirs after it, as
    /// a single pass did).
    pub resources: Vec<(Resource, usize)>,
    pub diags: Vec<Diagnostic>,
    /// Documents that are not empty.
    pub documents: usize,
}

impl Decoded {
    fn append(&mut self, part: Decoded) {
        let before = self.diags.len();
        self.resources.extend(part.resources.into_iter().map(|(r, n)| (r, before + n)));
        self.diags.extend(part.diags);
        self.documents += part.documents;
    }
}

/// Parses and decodes `source`: everything its documents say, or its first syntax error (then
/// nothing else of it: a file half written must not be half applied).
///
/// A source of [`HALVES_FROM`] or more is cut at a `---` line near its middle and the halves
/// read on two threads, each with the lines and documents before it as offset. The second
/// half's document count is only known once the first is read, so if the second half has
/// diagnostics (whose messages may name a document by its index) it is read again with the
/// count. The whole source is read again at once, as if never cut, when either half has a
/// syntax error (the first error of the whole is the one to report, and a cut inside a
/// malformed construct may give another) or uses anchors (their budget is the source's).
pub(crate) fn decode(source: &Source) -> Result<Decoded, SyntaxError> {
    let two_threads = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    if two_threads && source.text.len() >= HALVES_FROM {
        halves(source)
    } else {
        whole(source)
    }
}

/// [`decode`], in two halves if the source can be cut.
fn halves(source: &Source) -> Result<Decoded, SyntaxError> {
    match cut(&source.text) {
        Some(cut) => halves_at(source, cut),
        None => whole(source),
    }
}

/// [`decode`], in two halves cut at `cut`, the start of a bare `---` line.
fn halves_at(source: &Source, cut: usize) -> Result<Decoded, SyntaxError> {
    let second_at = Offset { lines: lines(&source.text[..cut]), documents: 0 };
    let (first, second) = std::thread::scope(|s| {
        let second = s.spawn(|| decode_part(source, cut..source.text.len(), second_at));
        let first = decode_part(source, 0..cut, Offset::default());
        (first, second.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    let (Ok((mut first, first_read)), Ok((second, second_read))) = (first, second) else {
        return whole(source);
    };
    if first_read.anchors || second_read.anchors {
        return whole(source);
    }
    let second = if second.diags.is_empty() {
        second
    } else {
        let at = Offset { documents: first_read.documents, ..second_at };
        decode_part(source, cut..source.text.len(), at)?.0
    };
    first.append(second);
    Ok(first)
}

/// The whole source on this thread.
fn whole(source: &Source) -> Result<Decoded, SyntaxError> {
    decode_part(source, 0..source.text.len(), Offset::default()).map(|(decoded, _)| decoded)
}

/// Parses and decodes `source.text[range]`, which starts after `at`.
fn decode_part(source: &Source, range: Range<usize>, at: Offset) -> Result<(Decoded, Part), SyntaxError> {
    let mut out = Decoded::default();
    let part = yaml::parse_part(&source.text[range], at, |doc| {
        out.documents += 1;
        if let Some(r) = resource::decode(&source.name, &doc, &mut out.diags) {
            out.resources.push((r, out.diags.len()));
        }
    })?;
    Ok((out, part))
}

/// Where to cut `text` in two: the start of the first line from its middle on that is a bare
/// `---` (a document start, which YAML allows nowhere else at the start of a line). `None`
/// if there is none, or if the text has directives (`%YAML`, `%TAG`: they apply to the
/// document after them, which the cut could separate them from) or line breaks that are a
/// lone carriage return (so that [`lines`] counts the lines as the parser does).
fn cut(text: &str) -> Option<usize> {
    if text.starts_with('%') || text.contains("\n%") || text.contains("\r%") || has_lone_cr(text) {
        return None;
    }
    let mut middle = text.len() / 2;
    while !text.is_char_boundary(middle) {
        middle += 1;
    }
    bare_document_starts(text, middle).next()
}

/// The starts of the lines of `text` after byte `from` that are a bare `---`.
fn bare_document_starts(text: &str, from: usize) -> impl Iterator<Item = usize> + '_ {
    text[from..].match_indices("\n---").map(move |(i, _)| from + i + 1).filter(|&start| {
        let rest = &text[start + 3..];
        let line_end = rest.find('\n').unwrap_or(rest.len());
        rest[..line_end].trim_end_matches([' ', '\t', '\r']).is_empty()
    })
}

/// Lines before the end of `text`, which ends at the start of a line.
fn lines(text: &str) -> usize {
    text.bytes().filter(|&b| b == b'\n').count()
}

fn has_lone_cr(text: &str) -> bool {
    text.ends_with('\r')
        || (text.contains('\r') && text.as_bytes().windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n'))
}

#[cfg(test)]
mod tests {
    //! Halves read on two threads give what the whole source read at once gives: the same
    //! resources (positions included), diagnostics in the same order (file, line, column,
    //! path, message), the same count of documents, the same syntax error; wherever it is cut.

    use proptest::prelude::*;

    use super::*;

    /// Documents of every kind that matters here. `{i}` makes names unique.
    const DOCUMENTS: &[&str] = &[
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se-{i}}\nspec:\n  hosts: [h{i}.local]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1}]\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs-{i}\nspec:\n  hosts: [h{i}.local]\n  http:\n  - route: [{destination: {host: h{i}.local}}]\n",
        // A warning (an unknown field) and an error (a wrong type), with their positions.
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr-{i}}\nspec:\n  host: h{i}.local\n  colour: blue\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: [1]}}}\n",
        // Diagnostics that name the document by its index.
        "just: a mapping\n",
        "a scalar\n",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
        // The same resource twice: a duplicate, wherever the halves are cut.
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: twice}\nspec: {servers: []}\n",
        // Empty documents, counted in the indexes.
        "",
        "# only a comment\n",
        "---\n",
        // Anchors: their budget is the whole source's.
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: anchored-{i}}\nspec:\n  hosts: [a{i}.local]\n  ports: &ports [{number: 80, name: http, protocol: HTTP}]\n  endpoints: [{address: 10.0.0.2}]\n",
        // A syntax error.
        "kind: [unclosed\n",
        // A quoted scalar over lines.
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: \"q-{i}\"}\nspec:\n  hosts: [\"q{i}.local\"]\n  http: [{route: [{destination: {host: \"q{i}\n    .local\"}}]}]\n",
    ];

    /// The documents `picks` of [`DOCUMENTS`], each after a `---` line (some with trailing
    /// blanks), with CRLF line breaks if `crlf`.
    fn source(picks: &[(usize, bool)], crlf: bool) -> Source {
        let mut text = String::from("# a config\n");
        for (i, &(pick, blanks)) in picks.iter().enumerate() {
            text += if blanks { "---  \n" } else { "---\n" };
            text += &DOCUMENTS[pick].replace("{i}", &i.to_string());
        }
        if crlf {
            text = text.replace('\n', "\r\n");
        }
        Source { name: "mesh.yaml".into(), text }
    }

    /// What a read gave, comparable.
    fn seen(
        read: Result<Decoded, SyntaxError>,
    ) -> Result<(Vec<String>, Vec<Diagnostic>, usize), SyntaxError> {
        read.map(|d| {
            let resources = d.resources.iter().map(|(r, before)| format!("{before} {r:?}")).collect();
            (resources, d.diags, d.documents)
        })
    }

    /// Every place the source can be cut: the start of each bare `---` line.
    fn cuts(text: &str) -> Vec<usize> {
        bare_document_starts(text, 0).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn halves_read_as_the_whole(
            picks in prop::collection::vec((0..DOCUMENTS.len(), any::<bool>()), 1..12),
            crlf in any::<bool>(),
        ) {
            let source = source(&picks, crlf);
            let whole = seen(whole(&source));
            for at in cuts(&source.text) {
                prop_assert_eq!(&seen(halves_at(&source, at)), &whole, "cut at byte {}", at);
            }
        }
    }

    #[test]
    fn a_source_is_cut_at_a_bare_document_start_from_its_middle_on() {
        let text = "a: 1\n---\nb: 2\n--- # c\nc: 3\n---  \nd: 4\n";
        let at = cut(text).expect("a cut");
        assert_eq!(&text[at..], "---  \nd: 4\n", "not at `--- # c`, which is not bare");
        assert_eq!(lines(&text[..at]), 5);
        assert_eq!(cut("a: 1\n---\nb: 2\n"), None, "no `---` line after the middle");
        assert_eq!(cut("%YAML 1.2\n---\na: 1\n---\nb: 2\n---\nc: 3\n"), None, "directives");
        assert_eq!(cut("a: 1\r---\rb: 2\r---\rc: 3\r"), None, "lone carriage returns");
        assert!(cut("a: 1\r\n---\r\nb: 2\r\n---\r\nc: 3\r\n").is_some(), "CRLF is fine");
    }

    #[test]
    fn the_second_half_counts_the_first_halfs_documents_and_lines() {
        let source = source(&[(0, false), (7, false), (3, false), (1, false), (4, true), (0, false)], false);
        let at = cuts(&source.text)[3];
        let read = halves_at(&source, at).expect("no syntax error");
        let (paths, lines): (Vec<&str>, Vec<usize>) =
            read.diags.iter().map(|d| (d.path.as_str(), d.line)).unzip();
        assert_eq!(paths, ["document 3", "document 5"], "{:#?}", read.diags);
        assert_eq!(lines, [13, 24]);
        assert_eq!(read.documents, 5, "the empty one is not counted");
    }
}
