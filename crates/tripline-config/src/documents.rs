//! A source's documents parsed and decoded into resources; a large source in two halves on
//! two threads; on a reload, only the documents that changed ([`DocumentCache`]).
//!
//! Why: parsing and decoding were most of a reload (about 1 s of 1.3 s for 10,000 services,
//! 17 MB of YAML, over half of it in `saphyr-parser`), and documents do not depend on each
//! other. The halves, and documents kept from the load before, give the same resources,
//! diagnostics and positions as the whole source read at once; wherever that is not certain,
//! the source is read whole (see [`decode`]).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::model::Resource;
use crate::yaml::{self, Offset, Part, SyntaxError};
use crate::{resource, Diagnostic, Source};

/// The documents of the last load, decoded, by their file and text: a reload parses and
/// decodes only the documents that changed, and takes the others as they were, moved to
/// where they now start (a line added above one moves every position in it; see
/// [`Resource::shifted`]).
///
/// A document is kept only if decoding it reported nothing (a diagnostic's text may name the
/// document by its index, which another document added before it changes) and used no
/// anchors (their budget is the whole source's). A document is what lies between two bare
/// `---` lines, the places [`decode`] may cut a source; a source it may not cut is read
/// whole. The key is a 128-bit hash of the file's name and the document's text (two SipHash
/// keys drawn for the cache), so that the cache holds the resources and not the text.
#[derive(Debug, Default)]
pub struct DocumentCache {
    kept: HashMap<Key, Kept>,
    hash: (RandomState, RandomState),
    /// Documents the last load took from the cache.
    reused: usize,
}

type Key = (u64, u64);

/// What one document (or run of text between two bare `---` lines) decoded to.
#[derive(Debug)]
struct Kept {
    resources: Vec<Arc<Resource>>,
    /// Documents in the text, empty ones included (indexes count them), and not empty.
    documents: usize,
    not_empty: usize,
    /// The line the text started on when it was placed last.
    line: usize,
    /// Read by this load: its resources are the decoded ones, not yet the cache's copies.
    fresh: bool,
}

impl DocumentCache {
    /// Documents kept for the next load.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Documents the last load took from the cache instead of parsing them.
    pub fn reused(&self) -> usize {
        self.reused
    }
}

/// One load's use of a [`DocumentCache`]: the documents of the last load still to take, and
/// those of this load to keep for the next. Shared by the two halves' threads.
#[derive(Debug)]
pub(crate) struct Reuse {
    old: Mutex<HashMap<Key, Kept>>,
    new: Mutex<HashMap<Key, Kept>>,
    hash: (RandomState, RandomState),
    reused: AtomicUsize,
}

impl Reuse {
    pub(crate) fn from(cache: &mut DocumentCache) -> Reuse {
        Reuse {
            old: Mutex::new(std::mem::take(&mut cache.kept)),
            new: Mutex::default(),
            hash: cache.hash.clone(),
            reused: AtomicUsize::new(0),
        }
    }

    /// Puts this load's documents in `cache`, the last load's that it did not use dropped.
    /// Call it once the load is compiled: the documents read by this load are kept as copies
    /// made now, of exactly their size and together in memory; the resources as decoded (with
    /// their vectors' spare capacity, spread among what the load freed) go with the load.
    /// That halved what the cache adds to the process (`docs/benchmarks.md`).
    pub(crate) fn finish(self, cache: &mut DocumentCache) {
        let mut kept = self.new.into_inner().unwrap_or_else(|p| p.into_inner());
        for doc in kept.values_mut().filter(|doc| doc.fresh) {
            for r in &mut doc.resources {
                *r = Arc::new(Resource::clone(r));
            }
            doc.fresh = false;
        }
        cache.kept = kept;
        cache.reused = self.reused.into_inner();
    }

    fn key(&self, file: &str, text: &str) -> Key {
        (self.hash.0.hash_one((file, text)), self.hash.1.hash_one((file, text)))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sources smaller than this are read on one thread: a thread is not worth it.
const HALVES_FROM: usize = 1 << 20;

/// What a source (or a part of one) decoded to.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    /// Its resources in document order, each with how many of `diags` were reported up to
    /// its own decoding included (so that checks across resources can put theirs after it, as
    /// a single pass did).
    pub resources: Vec<(Arc<Resource>, usize)>,
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
///
/// With `reuse`, each document (the text from one bare `---` line to the next) is taken from
/// the last load when its text is unchanged, and parsed on its own when not, on one thread or
/// in each half; a source that cannot be cut, or whose documents use anchors or have a
/// syntax error, is read whole as without it.
pub(crate) fn decode(source: &Source, reuse: Option<&Reuse>) -> Result<Decoded, SyntaxError> {
    let two_threads = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    let reuse = reuse.filter(|_| cuttable(&source.text));
    if two_threads && source.text.len() >= HALVES_FROM {
        halves(source, reuse)
    } else if reuse.is_some() {
        match decode_part(source, 0..source.text.len(), Offset::default(), reuse) {
            Ok((decoded, read)) if !read.anchors => Ok(decoded),
            _ => whole(source),
        }
    } else {
        whole(source)
    }
}

/// [`decode`], in two halves if the source can be cut.
fn halves(source: &Source, reuse: Option<&Reuse>) -> Result<Decoded, SyntaxError> {
    match cut(&source.text) {
        Some(cut) => halves_at(source, cut, reuse),
        None => whole(source),
    }
}

/// [`decode`], in two halves cut at `cut`, the start of a bare `---` line.
fn halves_at(source: &Source, cut: usize, reuse: Option<&Reuse>) -> Result<Decoded, SyntaxError> {
    let second_at = Offset { lines: lines(&source.text[..cut]), documents: 0 };
    let (first, second) = std::thread::scope(|s| {
        let second = s.spawn(|| decode_part(source, cut..source.text.len(), second_at, reuse));
        let first = decode_part(source, 0..cut, Offset::default(), reuse);
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
        decode_part(source, cut..source.text.len(), at, None)?.0
    };
    first.append(second);
    Ok(first)
}

/// The whole source on this thread.
fn whole(source: &Source) -> Result<Decoded, SyntaxError> {
    decode_part(source, 0..source.text.len(), Offset::default(), None).map(|(decoded, _)| decoded)
}

/// Parses and decodes `source.text[range]`, which starts after `at` (and, with `reuse`, at
/// the start of a line that is a bare `---` or at the start of the source).
fn decode_part(
    source: &Source,
    range: Range<usize>,
    at: Offset,
    reuse: Option<&Reuse>,
) -> Result<(Decoded, Part), SyntaxError> {
    let Some(reuse) = reuse else { return parse(source, range, at) };
    let text = &source.text[range.clone()];
    let mut bounds: Vec<usize> = std::iter::once(0).chain(bare_document_starts(text, 0)).collect();
    bounds.push(text.len());
    let pieces: Vec<Range<usize>> =
        bounds.windows(2).map(|w| w[0]..w[1]).filter(|piece| !piece.is_empty()).collect();
    let keys: Vec<Key> = pieces.iter().map(|piece| reuse.key(&source.name, &text[piece.clone()])).collect();
    // One lock each way per part, not per document: the two halves' threads would contend.
    let taken: Vec<Option<Kept>> = {
        let mut old = lock(&reuse.old);
        keys.iter().map(|key| old.remove(key)).collect()
    };
    let mut keep = Vec::with_capacity(pieces.len());
    let mut out = Decoded::default();
    let mut read = Part { documents: 0, anchors: false };
    let mut lines_before = at.lines;
    for ((piece, key), taken) in pieces.into_iter().zip(keys).zip(taken) {
        let piece_at = Offset { lines: lines_before, documents: at.documents + read.documents };
        lines_before += lines(&text[piece.clone()]);
        let kept = match taken {
            Some(mut kept) => {
                reuse.reused.fetch_add(1, Ordering::Relaxed);
                for r in &mut kept.resources {
                    if kept.line != piece_at.lines {
                        Arc::make_mut(r).move_by(kept.line, piece_at.lines);
                    }
                    out.resources.push((r.clone(), out.diags.len()));
                }
                out.documents += kept.not_empty;
                read.documents += kept.documents;
                Kept { line: piece_at.lines, ..kept }
            }
            None => {
                let piece_range = range.start + piece.start..range.start + piece.end;
                let (decoded, piece_read) = parse(source, piece_range, piece_at)?;
                read.documents += piece_read.documents;
                read.anchors |= piece_read.anchors;
                let clean = decoded.diags.is_empty() && !piece_read.anchors;
                let kept = Kept {
                    resources: decoded.resources.iter().map(|(r, _)| r.clone()).collect(),
                    documents: piece_read.documents,
                    not_empty: decoded.documents,
                    line: piece_at.lines,
                    fresh: true,
                };
                out.append(decoded);
                if !clean {
                    continue;
                }
                kept
            }
        };
        keep.push((key, kept));
    }
    let mut new = lock(&reuse.new);
    for (key, kept) in keep {
        // The same text twice in a file: the first is kept (the second is read each time).
        new.entry(key).or_insert(kept);
    }
    Ok((out, read))
}

/// Parses and decodes `source.text[range]`, which starts after `at`, at once.
fn parse(source: &Source, range: Range<usize>, at: Offset) -> Result<(Decoded, Part), SyntaxError> {
    let mut out = Decoded::default();
    let part = yaml::parse_part(&source.text[range], at, |doc| {
        out.documents += 1;
        if let Some(r) = resource::decode(&source.name, &doc, &mut out.diags) {
            out.resources.push((Arc::new(r), out.diags.len()));
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
    if !cuttable(text) {
        return None;
    }
    let mut middle = text.len() / 2;
    while !text.is_char_boundary(middle) {
        middle += 1;
    }
    bare_document_starts(text, middle).next()
}

/// Whether `text` may be cut at its bare `---` lines: no directives, no lone carriage return.
fn cuttable(text: &str) -> bool {
    !(text.starts_with('%') || text.contains("\n%") || text.contains("\r%") || has_lone_cr(text))
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
                prop_assert_eq!(&seen(halves_at(&source, at, None)), &whole, "cut at byte {}", at);
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
        let read = halves_at(&source, at, None).expect("no syntax error");
        let (paths, lines): (Vec<&str>, Vec<usize>) =
            read.diags.iter().map(|d| (d.path.as_str(), d.line)).unzip();
        assert_eq!(paths, ["document 3", "document 5"], "{:#?}", read.diags);
        assert_eq!(lines, [13, 24]);
        assert_eq!(read.documents, 5, "the empty one is not counted");
    }

    /// The documents `picks` of [`DOCUMENTS`], numbered from `from`, each after a `---` line.
    fn texts(picks: &[(usize, bool)], from: usize) -> Vec<String> {
        let dash = |blanks: bool| if blanks { "---  \n" } else { "---\n" };
        picks
            .iter()
            .enumerate()
            .map(|(i, &(p, b))| {
                format!("{}{}", dash(b), DOCUMENTS[p].replace("{i}", &(from + i).to_string()))
            })
            .collect()
    }

    fn joined(texts: &[String], crlf: bool) -> Source {
        let text = format!("# a config\n{}", texts.concat());
        let text = if crlf { text.replace('\n', "\r\n") } else { text };
        Source { name: "mesh.yaml".into(), text }
    }

    /// What a read gave, comparable between a read through the cache and one of the whole:
    /// each resource where it is now (`source`, `pos`) and what it says (its spec as
    /// `/config_dump` shows it). The positions inside a kept resource are where they were
    /// read; the diagnostics that use them are checked in `reloads_report_what_a_fresh_load_reports`.
    fn placed(
        read: Result<Decoded, SyntaxError>,
    ) -> Result<(Vec<String>, Vec<Diagnostic>, usize), SyntaxError> {
        read.map(|d| {
            let resources = d
                .resources
                .iter()
                .map(|(r, before)| {
                    format!("{before} {} {:?} {}", r.source, r.pos, serde_json::to_string(&**r).unwrap())
                })
                .collect();
            (resources, d.diags, d.documents)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// A config, then one with other documents before the same ones (each moved down),
        /// then the first again, each read through the cache the one before left: on one
        /// thread and in halves cut anywhere, they read as the whole source read at once.
        #[test]
        fn reads_through_the_cache_read_as_the_whole(
            first in prop::collection::vec((0..DOCUMENTS.len(), any::<bool>()), 1..10),
            added in prop::collection::vec((0..DOCUMENTS.len(), any::<bool>()), 0..4),
            crlf in any::<bool>(),
        ) {
            let kept = texts(&first, 0);
            let a = joined(&kept, crlf);
            let b = joined(&[texts(&added, 100), kept].concat(), crlf);
            let mut cache = DocumentCache::default();
            let mut halves_cache = DocumentCache::default();
            for source in [&a, &b, &a] {
                let expected = placed(whole(source));
                let reuse = Reuse::from(&mut cache);
                prop_assert_eq!(&placed(decode(source, Some(&reuse))), &expected);
                reuse.finish(&mut cache);
                for at in cuts(&source.text) {
                    let reuse = Reuse::from(&mut halves_cache);
                    prop_assert_eq!(&placed(halves_at(source, at, Some(&reuse))), &expected, "cut at byte {}", at);
                    reuse.finish(&mut halves_cache);
                }
            }
        }
    }

    /// A reload that moves documents reports what a fresh load reports, at the same lines,
    /// including the diagnostics found across resources (from positions inside a document
    /// taken from the cache), and takes the unchanged documents from the cache.
    #[test]
    fn reloads_report_what_a_fresh_load_reports() {
        let gateway = "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge}\nspec:\n  servers:\n  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n";
        let service = |i: usize| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s{i}}}\nspec:\n  hosts: [s{i}.local]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 10.0.0.{i}}}]\n")
        };
        // Routes to a host nobody declares: an error found only when compiling, at the
        // position of `host` inside the VirtualService.
        let routes = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: routes}\nspec:\n  hosts: [\"*\"]\n  gateways: [edge]\n  http:\n  - route:\n    - destination: {host: s1.local}\n  - route:\n    - destination:\n        host: nobody.local\n";
        let a = [gateway.to_string(), service(1), routes.to_string()].concat();
        let b = [service(2), service(3), gateway.to_string(), service(1), routes.to_string()].concat();
        let opts = crate::LoadOptions::default();
        let mut cache = DocumentCache::default();
        for (text, reused) in [(&a, 0), (&b, 3), (&a, 3)] {
            let sources = [Source { name: "mesh.yaml".into(), text: text.clone() }];
            let fresh = crate::load(&sources, &opts).expect_err("an unknown host");
            let reloaded = crate::load_reusing(&sources, &opts, &mut cache).expect_err("an unknown host");
            assert_eq!(reloaded, fresh);
            assert!(fresh.iter().any(|d| d.message.contains("nobody.local")), "{fresh:#?}");
            assert_eq!(cache.reused(), reused, "documents taken from the cache");
        }
    }
}
