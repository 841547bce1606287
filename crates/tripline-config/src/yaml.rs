//! A positioned YAML tree built from saphyr's event stream.
//!
//! We build our own tree instead of using `saphyr::MarkedYaml` so that every node (keys
//! included) keeps its 1-based line and column, duplicate keys reach the decoder (which reports
//! them with a field path), scalars keep whether they were quoted (so `"80"` stays a string),
//! nesting depth is bounded (no stack overflow on hostile input) and alias expansion has a
//! node budget (no "billion laughs").

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Deepest nesting of mappings and sequences accepted. Istio resources need about 12.
pub const MAX_DEPTH: usize = 64;
/// Nodes that alias expansion may produce in one source.
pub const ALIAS_BUDGET: usize = 100_000;

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    fn from_span(span: &Span, lines_before: usize) -> Pos {
        Pos { line: lines_before + span.start.line(), col: span.start.col() + 1 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// The text and whether it was plain (unquoted, untagged): only plain scalars can be
    /// null, booleans or numbers.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in document order; duplicate keys are kept for the decoder to report.
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Looks a key up in a mapping (first occurrence).
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries.iter().find(|(k, _)| k.as_scalar() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// How this node reads in a message: `a mapping`, `a list`, `null`, `` `text` ``.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Map(_) => "a mapping".into(),
            Kind::Seq(_) => "a list".into(),
            Kind::Scalar { .. } if self.is_null() => "null".into(),
            Kind::Scalar { text, .. } => {
                let short: String = text.chars().take(40).collect();
                if short.len() < text.len() {
                    format!("`{short}...`")
                } else {
                    format!("`{short}`")
                }
            }
        }
    }

    fn count(&self) -> usize {
        match &self.kind {
            Kind::Scalar { .. } => 1,
            Kind::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            Kind::Map(entries) => 1 + entries.iter().map(|(k, v)| k.count() + v.count()).sum::<usize>(),
        }
    }
}

/// One `---` document with a root node.
#[derive(Debug, Clone)]
pub struct Document {
    /// Index of the document in its source, counting empty ones (0-based).
    pub index: usize,
    pub root: Node,
}

/// A YAML syntax error, or a limit hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

enum Frame {
    Seq { pos: Pos, anchor: usize, items: Vec<Node> },
    Map { pos: Pos, anchor: usize, entries: Vec<(Node, Node)>, key: Option<Node> },
}

/// Parses a multi-document YAML stream. Empty documents (nothing, or a lone null) are skipped.
pub fn parse(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let mut docs = Vec::new();
    parse_each(text, |doc| docs.push(doc))?;
    Ok(docs)
}

/// Parses a multi-document YAML stream and hands each document to `each` as soon as it is
/// complete, so that only one document's tree exists at a time (a tree takes about 25 times
/// the room of its text). Stops at the first syntax error: the documents before it have been
/// handed out already.
pub fn parse_each(text: &str, each: impl FnMut(Document)) -> Result<(), SyntaxError> {
    parse_part(text, Offset::default(), each).map(|_| ())
}

/// Where a part of a source starts: how many lines and documents of the source come before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offset {
    pub lines: usize,
    pub documents: usize,
}

/// What [`parse_part`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Documents, counting empty ones.
    pub documents: usize,
    /// Whether an anchor or an alias was used: [`ALIAS_BUDGET`] is spent across a whole
    /// source, so a source cut into parts that use them must be read whole.
    pub anchors: bool,
}

/// [`parse_each`] for a part of a source that starts after `at`, its first line at the start
/// of one of the source's lines: positions and document indexes are the source's.
pub fn parse_part(text: &str, at: Offset, mut each: impl FnMut(Document)) -> Result<Part, SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut budget = ALIAS_BUDGET;
    let mut doc_index = at.documents;
    let mut anchored = false;

    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| SyntaxError {
            pos: Pos { line: at.lines + e.marker().line(), col: e.marker().col() + 1 },
            message: e.info().to_string(),
        })?;
        let pos = Pos::from_span(&span, at.lines);
        let done: Option<(Node, usize)> = match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart(_) => None,
            Event::DocumentEnd => {
                if let Some(node) = root.take() {
                    if !node.is_null() {
                        each(Document { index: doc_index, root: node });
                    }
                }
                anchors.clear();
                doc_index += 1;
                None
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(SyntaxError {
                        pos,
                        message: format!(
                            "nesting deeper than {MAX_DEPTH} levels; this is not an Istio resource"
                        ),
                    });
                }
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq { pos, anchor, items: Vec::new() }
                } else {
                    Frame::Map { pos, anchor, entries: Vec::new(), key: None }
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq { pos, anchor, items }) => {
                    Some((Node { pos, kind: Kind::Seq(items) }, anchor))
                }
                Some(Frame::Map { pos, anchor, entries, key }) => {
                    let mut entries = entries;
                    if let Some(k) = key {
                        // A key without value cannot come out of the parser, but be total.
                        let null =
                            Node { pos: k.pos, kind: Kind::Scalar { text: String::new(), plain: true } };
                        entries.push((k, null));
                    }
                    Some((Node { pos, kind: Kind::Map(entries) }, anchor))
                }
                None => None,
            },
            Event::Scalar(text, style, anchor, tag) => {
                let tagged_str =
                    tag.as_ref().is_some_and(|t| t.suffix == "str" || t.suffix.ends_with(":str"));
                let plain = style == ScalarStyle::Plain && !tagged_str;
                Some((Node { pos, kind: Kind::Scalar { text: text.into_owned(), plain } }, anchor))
            }
            Event::Alias(id) => {
                anchored = true;
                let Some(target) = anchors.get(&id) else {
                    return Err(SyntaxError { pos, message: "alias to an unknown anchor".into() });
                };
                let n = target.count();
                if n > budget {
                    return Err(SyntaxError {
                        pos,
                        message: format!("aliases expand to more than {ALIAS_BUDGET} nodes"),
                    });
                }
                budget -= n;
                let mut node = target.clone();
                node.pos = pos;
                Some((node, 0))
            }
        };
        let Some((node, anchor)) = done else { continue };
        if anchor > 0 {
            anchored = true;
            let n = node.count();
            if n > budget {
                return Err(SyntaxError {
                    pos,
                    message: format!("anchors expand to more than {ALIAS_BUDGET} nodes"),
                });
            }
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
    Ok(Part { documents: doc_index - at.documents, anchors: anchored })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(n: &Node) -> (&str, bool) {
        match &n.kind {
            Kind::Scalar { text, plain } => (text, *plain),
            _ => panic!("not a scalar: {n:?}"),
        }
    }

    #[test]
    fn positions_are_one_based_for_keys_and_values() {
        let docs = parse("a: 1\nb:\n  c: \"80\"\n").unwrap();
        assert_eq!(docs.len(), 1);
        let root = &docs[0].root;
        let Kind::Map(entries) = &root.kind else { panic!() };
        assert_eq!(entries[0].0.pos, Pos { line: 1, col: 1 });
        assert_eq!(entries[0].1.pos, Pos { line: 1, col: 4 });
        let c = root.get("b").unwrap().get("c").unwrap();
        assert_eq!(c.pos, Pos { line: 3, col: 6 });
        assert_eq!(scalar(c), ("80", false), "quoted scalars are strings");
    }

    #[test]
    fn multi_document_skips_empty_documents_and_counts_them() {
        let docs = parse("---\n---\na: 1\n---\n# only a comment\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].index, 1);
        assert_eq!(docs[1].index, 3);
        assert_eq!(docs[1].root.get("b").map(scalar), Some(("2", true)));
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.pos.line >= 2, "{err:?}");
        assert!(!err.message.is_empty());
    }

    #[test]
    fn duplicate_keys_are_kept_for_the_decoder() {
        let docs = parse("a: 1\na: 2\n").unwrap();
        let Kind::Map(entries) = &docs[0].root.kind else { panic!() };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].0.pos.line, 2);
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(&deep).unwrap_err().message.contains("nesting"));
        let block: String = (0..10_000).map(|_| "- ").collect::<String>() + "x\n";
        assert!(parse(&block).unwrap_err().message.contains("nesting"));
    }

    #[test]
    fn aliases_resolve_and_billion_laughs_is_bounded() {
        let docs = parse("a: &x {k: v}\nb: *x\n").unwrap();
        assert_eq!(docs[0].root.get("b").unwrap().get("k").map(scalar), Some(("v", true)));
        let mut lol = String::from("l0: &l0 [a, a, a, a, a, a, a, a, a, a]\n");
        for i in 1..10 {
            let p = i - 1;
            lol += &format!(
                "l{i}: &l{i} [*l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}]\n"
            );
        }
        assert!(parse(&lol).unwrap_err().message.contains("expand"));
    }

    #[test]
    fn unknown_alias_is_an_error() {
        assert!(parse("a: *nope\n").is_err());
    }
}
