//! YAML text to a document tree with bounded size and nesting, for placement files.
//!
//! `yaml_rust2::YamlLoader` builds its tree by recursion (a document nested 200k deep
//! overflows the stack) and expands aliases by copying (a few lines of `*a` references can
//! ask for gigabytes). Its event parser is an explicit state machine, so this module drives
//! that parser itself: the text is refused past [`MAX_PLACEMENT_BYTES`] before parsing, the
//! tree is refused as soon as it opens its `MAX_YAML_DEPTH + 1`-th level, and aliases are
//! refused (a placement file has no use for them). Scalars become the same [`Yaml`] values the
//! loader makes.

use moe_core::limits::{MAX_PLACEMENT_BYTES, MAX_YAML_DEPTH};
use moe_core::{MoeError, Result};
use yaml_rust2::parser::{Parser, Tag};
use yaml_rust2::scanner::TScalarStyle;
use yaml_rust2::yaml::Hash;
use yaml_rust2::{Event, Yaml};

/// A collection being built: a list, or a mapping with the key awaiting its value.
enum Open {
    List(Vec<Yaml>),
    Map(Hash, Option<Yaml>),
}

/// The documents of `text`; `what` names the file in errors.
pub(crate) fn load(text: &str, what: &str) -> Result<Vec<Yaml>> {
    if text.len() as u64 > MAX_PLACEMENT_BYTES {
        return Err(MoeError::config(
            what,
            format!(
                "is {} bytes, above the limit of {MAX_PLACEMENT_BYTES} (docs/LIMITS.md)",
                text.len()
            ),
        ));
    }
    let invalid = |e: &dyn std::fmt::Display| MoeError::config(what, format!("is not valid YAML: {e}"));
    let mut parser = Parser::new_from_str(text);
    let mut docs = Vec::new();
    let mut stack: Vec<Open> = Vec::new();
    loop {
        let (event, mark) = parser.next_token().map_err(|e| invalid(&e))?;
        let node = match event {
            Event::StreamEnd => return Ok(docs),
            Event::Nothing | Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => continue,
            Event::Alias(_) => {
                return Err(MoeError::config(
                    what,
                    format!("uses an alias at line {}: aliases are not accepted", mark.line()),
                ));
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if stack.len() >= MAX_YAML_DEPTH {
                    return Err(MoeError::config(
                        what,
                        format!(
                            "nests deeper than {MAX_YAML_DEPTH} levels at line {} (docs/LIMITS.md)",
                            mark.line()
                        ),
                    ));
                }
                stack.push(match event {
                    Event::SequenceStart(..) => Open::List(Vec::new()),
                    _ => Open::Map(Hash::new(), None),
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Open::List(items)) => Yaml::Array(items),
                Some(Open::Map(h, _)) => Yaml::Hash(h),
                None => return Err(invalid(&"a collection ends that never started")),
            },
            Event::Scalar(value, style, _, tag) => scalar(value, style, tag.as_ref()),
        };
        match stack.last_mut() {
            None => docs.push(node),
            Some(Open::List(items)) => items.push(node),
            Some(Open::Map(_, key @ None)) => *key = Some(node),
            Some(Open::Map(h, key)) => {
                let k = key.take().unwrap_or(Yaml::Null);
                if h.contains_key(&k) {
                    return Err(MoeError::config(what, format!("repeats a key at line {}", mark.line())));
                }
                h.insert(k, node);
            }
        }
    }
}

/// A scalar as `YamlLoader` types it: quoted ones are strings, core-schema tags are honoured,
/// plain ones are typed from their text.
fn scalar(value: String, style: TScalarStyle, tag: Option<&Tag>) -> Yaml {
    if style != TScalarStyle::Plain {
        return Yaml::String(value);
    }
    match tag {
        Some(t) if t.handle == "tag:yaml.org,2002:" => match t.suffix.as_str() {
            "bool" => match value.as_str() {
                "true" | "True" | "TRUE" => Yaml::Boolean(true),
                "false" | "False" | "FALSE" => Yaml::Boolean(false),
                _ => Yaml::BadValue,
            },
            "int" => value.parse::<i64>().map_or(Yaml::BadValue, Yaml::Integer),
            "float" => match Yaml::from_str(&value) {
                Yaml::Real(r) => Yaml::Real(r),
                Yaml::Integer(_) => Yaml::Real(value),
                _ => Yaml::BadValue,
            },
            "null" => match value.as_str() {
                "~" | "null" => Yaml::Null,
                _ => Yaml::BadValue,
            },
            _ => Yaml::String(value),
        },
        Some(_) => Yaml::String(value),
        None => Yaml::from_str(&value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yaml_rust2::YamlLoader;

    #[test]
    fn trees_match_the_loader_on_ordinary_documents() {
        for text in [
            "num_slots: 6\nlayer_updates_per_iter: 0\ninitial_global_assignments:\n  3: [0, 1, 2, 2, 3, 0]\n  '5': [3, 2, 1, 0, 0, 1]\n",
            "a: [1, {b: c}, ~, true, 0x1f, 2.5, \"7\"]\n",
            "- - 1\n  - 2\n- x: !!int 3\n  y: !!float 4\n",
            "a: 1\n---\nb: 2\n",
        ] {
            assert_eq!(load(text, "f").ok(), YamlLoader::load_from_str(text).ok(), "{text}");
        }
    }

    #[test]
    fn deep_nesting_aliases_and_repeated_keys_are_refused() {
        // Flow nesting: the scanner's own bound may speak first; either way a typed error.
        let e = load(&"[".repeat(200_000), "placement").unwrap_err().to_string();
        assert!(
            e.contains("placement") && e.contains("deeper") || e.contains("recursion limit"),
            "{e}"
        );
        let e = load(&"[".repeat(40), "placement").unwrap_err().to_string();
        assert!(e.contains("nests deeper than 32"), "{e}");
        let deep_block = "- ".repeat(200_000) + "1\n";
        let e = load(&deep_block, "p").unwrap_err().to_string();
        assert!(e.contains("nests deeper than 32"), "{e}");
        let e = load("a: &x [1, 2]\nb: *x\n", "p").unwrap_err().to_string();
        assert!(e.contains("alias"), "{e}");
        let e = load("a: 1\na: 2\n", "p").unwrap_err().to_string();
        assert!(e.contains("repeats a key"), "{e}");
        assert!(load(&" ".repeat(MAX_PLACEMENT_BYTES as usize + 1), "p").is_err());
    }
}
