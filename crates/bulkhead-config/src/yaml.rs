//! A YAML document as a tree of nodes that remember where they were written.
//!
//! serde stops at the first error, but an operator wants every mistake of a
//! config in one run (DESIGN §3). So loading has two passes: this module turns
//! the text into a [`Node`] tree with line/column positions (built from
//! `saphyr-parser` events, the parser under `serde-saphyr`), and `parse` walks
//! the tree, collecting every error it meets.
//!
//! Guard rails against hostile YAML: duplicate keys are errors, aliases are
//! expanded against a node budget (no billion laughs), and nesting is bounded.

use saphyr_parser::{Event, Parser, ScalarStyle};
use std::collections::HashMap;

/// Where something was written: 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// 1-based line number.
    pub line: u32,
    /// 1-based column number.
    pub col: u32,
}

/// One YAML node and its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Where the node starts.
    pub pos: Pos,
    /// What it holds.
    pub kind: NodeKind,
}

/// The three YAML node kinds. Scalars keep their text and whether they were
/// written plain (unquoted), which is what decides whether `off`/`~` mean
/// something special.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// A mapping, keys in document order.
    Map(Vec<(Node, Node)>),
    /// A sequence.
    Seq(Vec<Node>),
    /// A scalar: its text and whether it was plain (unquoted).
    Scalar(String, bool),
}

impl Node {
    /// The scalar text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    /// True for `~`, `null`, or an empty plain scalar.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar(s, true) if s.is_empty() || s == "~" || s.eq_ignore_ascii_case("null"))
    }

    /// A short name of the node's kind, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Map(_) => "a mapping",
            NodeKind::Seq(_) => "a list",
            NodeKind::Scalar(..) if self.is_null() => "null",
            NodeKind::Scalar(..) => "a scalar",
        }
    }
}

/// A syntax error in the YAML text itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// Where the parser stopped.
    pub pos: Pos,
    /// What it found.
    pub message: String,
}

/// Most nodes a document may expand to (aliases included).
const MAX_NODES: usize = 1_000_000;
/// Deepest nesting accepted.
const MAX_DEPTH: usize = 64;

/// Parse one YAML document into a [`Node`] tree. An empty document is an
/// empty mapping.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        root: None,
        documents: 0,
    };
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| SyntaxError {
            pos: Pos {
                line: clamp(e.marker().line()),
                col: clamp(e.marker().col() + 1),
            },
            message: e.info().to_string(),
        })?;
        let pos = Pos {
            line: clamp(span.start.line()),
            col: clamp(span.start.col() + 1),
        };
        builder.event(event, pos)?;
    }
    Ok(builder.root.unwrap_or(Node {
        pos: Pos { line: 1, col: 1 },
        kind: NodeKind::Map(Vec::new()),
    }))
}

fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

enum Frame {
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    root: Option<Node>,
    documents: usize,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, pos: Pos) -> Result<(), SyntaxError> {
        let err = |message: &str| SyntaxError {
            pos,
            message: message.to_string(),
        };
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(err("more than one YAML document; a config is one document"));
                }
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _)
                if self.stack.len() >= MAX_DEPTH =>
            {
                let _ = anchor;
                return Err(err("nesting is too deep"));
            }
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                pos,
                anchor,
                entries: Vec::new(),
                key: None,
            }),
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                pos,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    ..
                }) = self.stack.pop()
                {
                    self.push(
                        Node {
                            pos,
                            kind: NodeKind::Map(entries),
                        },
                        anchor,
                    )?;
                }
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { pos, anchor, items }) = self.stack.pop() {
                    self.push(
                        Node {
                            pos,
                            kind: NodeKind::Seq(items),
                        },
                        anchor,
                    )?;
                }
            }
            Event::Scalar(value, style, anchor, _tag) => {
                let plain = matches!(style, ScalarStyle::Plain);
                self.push(
                    Node {
                        pos,
                        kind: NodeKind::Scalar(value.into_owned(), plain),
                    },
                    anchor,
                )?;
            }
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| err("alias to an unknown anchor"))?;
                let size = count(&node);
                self.nodes += size;
                if self.nodes > MAX_NODES {
                    return Err(err("document expands to too many nodes (alias bomb?)"));
                }
                self.push(Node { pos, ..node }, 0)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(SyntaxError {
                pos: node.pos,
                message: "document has too many nodes".into(),
            });
        }
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    if let Some(first) = entries.iter().find(|(e, _)| same_key(e, &k)) {
                        return Err(SyntaxError {
                            pos: k.pos,
                            message: format!(
                                "duplicate key `{}` (first at line {})",
                                k.as_str().unwrap_or("?"),
                                first.0.pos.line
                            ),
                        });
                    }
                    entries.push((k, node));
                }
            },
        }
        Ok(())
    }
}

fn same_key(a: &Node, b: &Node) -> bool {
    match (&a.kind, &b.kind) {
        (NodeKind::Scalar(x, _), NodeKind::Scalar(y, _)) => x == y,
        _ => false,
    }
}

fn count(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar(..) => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        NodeKind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count(k) + count(v))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let node = parse("a: 1\nb:\n  - x\n").expect("valid yaml");
        let NodeKind::Map(entries) = &node.kind else {
            panic!("not a map")
        };
        assert_eq!(entries[1].0.pos, Pos { line: 2, col: 1 });
        let NodeKind::Seq(items) = &entries[1].1.kind else {
            panic!("not a seq")
        };
        assert_eq!(items[0].pos, Pos { line: 3, col: 5 });
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("a: 1\na: 2\n").expect_err("duplicate");
        assert_eq!(err.pos.line, 2);
        assert!(err.message.contains("duplicate key `a`"));
    }

    #[test]
    fn alias_bomb_is_bounded() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse(&doc).is_err());
    }

    #[test]
    fn quoted_scalars_are_not_plain() {
        let node = parse("a: 'off'\nb: off\n").expect("valid");
        let NodeKind::Map(e) = node.kind else {
            panic!()
        };
        assert_eq!(e[0].1.kind, NodeKind::Scalar("off".into(), false));
        assert_eq!(e[1].1.kind, NodeKind::Scalar("off".into(), true));
    }
}
