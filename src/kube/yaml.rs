//! YAML to `serde_json::Value`, for kubeconfig files: saphyr-parser does
//! the YAML grammar (block and flow style, quoting and escapes, block
//! scalars, comments, anchors); this file turns its events into a JSON tree
//! that serde then maps onto the typed kubeconfig.
//!
//! Scalars are typed as Go's readers of kubeconfigs type them
//! (sigs.k8s.io/yaml decodes with the target struct in hand, so a value
//! takes the type of its field). Every field read here is a string or a
//! bool, so every scalar stays text (`token: 0123` stays `"0123"`, never
//! the number 123) except the plain nulls (`~`, `null`, empty); the bool
//! fields use [`de_bool`].
//!
//! Also handled: only the first document of a stream (as client-go), a
//! leading byte-order mark, aliases (their expansion capped against
//! "billion laughs"), YAML 1.1 merge keys (`<<: *base`), and duplicate keys
//! (an error).

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, Tag};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Maximum number of nodes that alias expansion may produce in one document.
const ALIAS_BUDGET: usize = 100_000;

/// A YAML syntax error, or a construct this loader does not take (e.g. a
/// mapping as a key).
#[derive(Debug)]
pub struct YamlError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl YamlError {
    fn at(span: &Span, message: impl Into<String>) -> YamlError {
        YamlError {
            line: span.start.line(),
            column: span.start.col() + 1,
            message: message.into(),
        }
    }

    fn scan(e: &ScanError) -> YamlError {
        YamlError {
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_string(),
        }
    }
}

/// A collection being built.
enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
    },
    Map {
        map: Map<String, Value>,
        key: Option<String>,
        merges: Vec<Map<String, Value>>,
        anchor: usize,
    },
}

/// Parse the first YAML document of `text` into a JSON value (`Null` for an empty stream).
pub fn parse(text: &str) -> Result<Value, YamlError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parser = Parser::new_from_str(text);
    let mut tree = Tree {
        stack: Vec::new(),
        anchors: HashMap::new(),
        budget: ALIAS_BUDGET,
        root: None,
    };
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| YamlError::scan(&e))?;
        let done = match event {
            Event::Nothing | Event::StreamStart | Event::DocumentStart(_) => None,
            Event::StreamEnd => break,
            // The first document only.
            Event::DocumentEnd if tree.root.is_some() => break,
            Event::DocumentEnd => None,
            Event::SequenceStart(anchor, _) => tree.open(Frame::Seq {
                items: Vec::new(),
                anchor,
            }),
            Event::MappingStart(anchor, _) => tree.open(Frame::Map {
                map: Map::new(),
                key: None,
                merges: Vec::new(),
                anchor,
            }),
            Event::SequenceEnd | Event::MappingEnd => Some(tree.close(&span)?),
            Event::Alias(id) => tree.alias(id, &span)?,
            Event::Scalar(text, style, anchor, tag) => {
                tree.scalar(text.into_owned(), style, anchor, tag.as_deref(), &span)?
            }
        };
        if let Some((value, anchor)) = done {
            tree.attach(value, anchor, &span)?;
        }
    }
    Ok(tree.root.unwrap_or(Value::Null))
}

/// The document being built from the parser's events: each event either
/// opens a collection, completes a value (a scalar, an alias, a closed
/// collection: `Some((value, anchor))`, which [`Tree::attach`] puts in
/// its place), or sets a mapping's pending key (`None`).
struct Tree {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    /// Nodes that aliases may still expand to.
    budget: usize,
    root: Option<Value>,
}

/// A value completed by an event, with its anchor (0: none).
type Done = Option<(Value, usize)>;

impl Tree {
    fn open(&mut self, frame: Frame) -> Done {
        self.stack.push(frame);
        None
    }

    fn close(&mut self, span: &Span) -> Result<(Value, usize), YamlError> {
        match self.stack.pop() {
            Some(Frame::Seq { items, anchor }) => Ok((Value::Array(items), anchor)),
            Some(Frame::Map {
                mut map,
                merges,
                anchor,
                ..
            }) => {
                // Merge keys: explicit keys win; among merged maps, earlier ones win.
                for merged in merges {
                    for (k, v) in merged {
                        map.entry(k).or_insert(v);
                    }
                }
                Ok((Value::Object(map), anchor))
            }
            None => Err(YamlError::at(span, "unbalanced collection end")),
        }
    }

    /// The mapping's pending key slot, when the next value is a key.
    fn key_slot(&mut self) -> Option<&mut Option<String>> {
        match self.stack.last_mut() {
            Some(Frame::Map {
                key: key @ None, ..
            }) => Some(key),
            _ => None,
        }
    }

    fn alias(&mut self, id: usize, span: &Span) -> Result<Done, YamlError> {
        let value = self
            .anchors
            .get(&id)
            .cloned()
            .ok_or_else(|| YamlError::at(span, "alias to an unknown anchor"))?;
        self.budget = self
            .budget
            .checked_sub(count_nodes(&value))
            .ok_or_else(|| YamlError::at(span, "aliases expand to too many nodes"))?;
        // A mapping key given as an alias must be a string.
        let Some(key) = self.key_slot() else {
            return Ok(Some((value, 0)));
        };
        match value {
            Value::String(s) => *key = Some(s),
            _ => {
                return Err(YamlError::at(
                    span,
                    "only string mapping keys are supported",
                ));
            }
        }
        Ok(None)
    }

    fn scalar(
        &mut self,
        text: String,
        style: ScalarStyle,
        anchor: usize,
        tag: Option<&Tag>,
        span: &Span,
    ) -> Result<Done, YamlError> {
        if self.key_slot().is_none() {
            return Ok(Some((scalar(text, style, tag), anchor)));
        }
        // A scalar in key position becomes the pending key, taken verbatim.
        if anchor > 0 {
            self.anchors.insert(anchor, Value::String(text.clone()));
        }
        if let Some(Frame::Map { map, key, .. }) = self.stack.last_mut() {
            if text != "<<" && map.contains_key(&text) {
                return Err(YamlError::at(span, format!("duplicate key {text:?}")));
            }
            *key = Some(text);
        }
        Ok(None)
    }

    /// Puts a completed value where it belongs: the root, the end of the
    /// open sequence, or the open mapping under its pending key (merged,
    /// for `<<`).
    fn attach(&mut self, value: Value, anchor: usize, span: &Span) -> Result<(), YamlError> {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        let (map, key, merges) = match self.stack.last_mut() {
            None => {
                self.root = Some(value);
                return Ok(());
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(value);
                return Ok(());
            }
            Some(Frame::Map {
                map, key, merges, ..
            }) => (map, key, merges),
        };
        let Some(k) = key.take() else {
            return Err(YamlError::at(
                span,
                "only scalar mapping keys are supported",
            ));
        };
        if k != "<<" {
            if map.contains_key(&k) {
                return Err(YamlError::at(span, format!("duplicate key {k:?}")));
            }
            map.insert(k, value);
            return Ok(());
        }
        match value {
            Value::Object(m) => merges.push(m),
            Value::Array(list) if list.iter().all(Value::is_object) => {
                merges.extend(list.into_iter().filter_map(|v| match v {
                    Value::Object(m) => Some(m),
                    _ => None,
                }))
            }
            _ => {
                return Err(YamlError::at(
                    span,
                    "merge key `<<` needs a mapping or a list of mappings",
                ));
            }
        }
        Ok(())
    }
}

/// Plain `~`, `null` (any case YAML allows) and the empty plain scalar are null; all else is text.
fn scalar(text: String, style: ScalarStyle, tag: Option<&Tag>) -> Value {
    let explicit_str = tag.is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str");
    if style == ScalarStyle::Plain
        && !explicit_str
        && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
    {
        Value::Null
    } else {
        Value::String(text)
    }
}

fn count_nodes(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(count_nodes).sum::<usize>(),
        Value::Object(m) => 1 + m.values().map(count_nodes).sum::<usize>(),
        _ => 1,
    }
}

/// Serde helper for optional boolean fields fed by [`parse`]: accepts JSON booleans and the YAML
/// spellings `true/True/TRUE/false/False/FALSE` plus YAML 1.1's `yes/no/on/off` (which Go's
/// yaml.v2 also reads as booleans into bool fields).
pub fn de_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Bool(bool),
        Text(String),
    }
    match Option::<B>::deserialize(d)? {
        None => Ok(None),
        Some(B::Bool(b)) => Ok(Some(b)),
        Some(B::Text(s)) => match s.as_str() {
            "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Ok(Some(true)),
            "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
                Ok(Some(false))
            }
            other => Err(serde::de::Error::custom(format!(
                "expected a boolean, found {other:?}"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn test_block_and_flow_agree() {
        let block = "a:\n  - name: x\n    v: '1'\n  - name: y\nb: c\n";
        let flow = "{a: [{name: x, v: \"1\"}, {name: y}], b: c}";
        assert_eq!(parse(block).unwrap(), parse(flow).unwrap());
        assert_eq!(
            parse(block).unwrap(),
            json!({"a": [{"name": "x", "v": "1"}, {"name": "y"}], "b": "c"})
        );
    }

    #[test]
    fn test_scalars_stay_text() {
        let v = parse("t: 0123\nf: 1.50\nb: true\nn: ~\ne:\nq: \"null\"\ns: !!str null\n").unwrap();
        assert_eq!(
            v,
            json!({"t": "0123", "f": "1.50", "b": "true", "n": null, "e": null, "q": "null", "s": "null"})
        );
    }

    #[test]
    fn test_block_scalars_comments_documents() {
        let v = parse(
            "\u{feff}# c\n---\nlit: |\n  a\n  b\nfold: >-\n  x\n  y\n# end\n---\nsecond: 1\n",
        )
        .unwrap();
        assert_eq!(v, json!({"lit": "a\nb\n", "fold": "x y"}));
        assert_eq!(parse("").unwrap(), Value::Null);
        assert_eq!(parse("# only a comment\n").unwrap(), Value::Null);
    }

    #[test]
    fn test_anchors_aliases_merge() {
        let v = parse("base: &b {x: 1, y: 2}\nk: &s str\nc:\n  <<: *b\n  y: 3\n  z: *s\n").unwrap();
        assert_eq!(v["c"], json!({"x": "1", "y": "3", "z": "str"}));
    }

    #[test]
    fn test_errors_have_positions() {
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert!(e.message.contains("duplicate key"), "{e:?}");
        assert_eq!(e.line, 2);
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.line >= 1, "{e:?}");
        assert!(parse("? [a]\n: b\n").is_err());
        assert!(parse("a: *nope\n").is_err());
    }

    #[test]
    fn test_billion_laughs_capped() {
        let mut doc = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = (b'a' + i - 1) as char;
            let n = (b'a' + i) as char;
            doc += &format!(
                "{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            );
        }
        let e = parse(&doc).unwrap_err();
        assert!(e.message.contains("too many"), "{e:?}");
    }

    #[test]
    fn test_de_bool_spellings() {
        #[derive(Deserialize)]
        struct S {
            #[serde(default, deserialize_with = "de_bool")]
            b: Option<bool>,
        }
        let read = |text: &str| serde_json::from_value::<S>(parse(text).unwrap()).map(|s| s.b);
        for (text, want) in [
            ("b: true", Some(true)),
            ("b: 'True'", Some(true)),
            ("b: yes", Some(true)),
            ("b: On", Some(true)),
            ("b: FALSE", Some(false)),
            ("b: no", Some(false)),
            ("b: off", Some(false)),
            ("b:", None),
            ("b: ~", None),
            ("{}", None),
        ] {
            assert_eq!(read(text).unwrap(), want, "{text}");
        }
        let e = read("b: maybe").unwrap_err().to_string();
        assert!(e.contains("expected a boolean"), "{e}");
    }
}
