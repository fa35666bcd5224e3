//! CouchDB's document bodies as JSON text. A body is stored as EJSON: an object is
//! `{[{Key, Value}, ...]}`, an array a list, a string a binary, `true`/`false`/`null`
//! atoms. Written straight to text, so big integers and floats keep CouchDB's values.

use std::fmt::Write as _;

use super::etf::Term;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EjsonError {
    #[error("a string is not UTF-8")]
    NotUtf8,
    #[error("an object key is not a string")]
    Key,
    #[error("a term that is not JSON: {0}")]
    NotJson(String),
}

/// Appends `t` as JSON to `out`.
pub fn write(t: &Term, out: &mut String) -> Result<(), EjsonError> {
    match t {
        Term::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Term::Big(digits) => out.push_str(digits),
        Term::Float(f) if f.is_finite() => {
            // Shortest text that reads back as the same f64, always with a '.' or 'e'
            // so that it stays a float.
            let s = format!("{f:?}");
            out.push_str(&s);
        }
        Term::Bin(b) => string(
            std::str::from_utf8(b).map_err(|_| EjsonError::NotUtf8)?,
            out,
        ),
        Term::List(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(v, out)?;
            }
            out.push(']');
        }
        Term::Tuple(one) if one.len() == 1 => {
            let pairs = one[0]
                .as_list()
                .ok_or_else(|| EjsonError::NotJson("a 1-tuple that is not an object".into()))?;
            out.push('{');
            write_pairs(pairs, out)?;
            out.push('}');
        }
        Term::Atom(a) if a == "true" || a == "false" || a == "null" => out.push_str(a),
        // As CouchDB's JSON encoder writes them (its own documents hold a few).
        Term::Atom(a) => string(a, out),
        other => {
            return Err(EjsonError::NotJson(
                format!("{other:?}").chars().take(80).collect(),
            ))
        }
    }
    Ok(())
}

/// The members of an EJSON object, `"k":v,...`, without braces.
pub fn write_pairs(pairs: &[Term], out: &mut String) -> Result<(), EjsonError> {
    for (i, p) in pairs.iter().enumerate() {
        // CouchDB's own documents (the shard map's `props`) may have atom keys.
        let (k, v) = match p.as_tuple() {
            Some([Term::Bin(k), v]) => {
                (std::str::from_utf8(k).map_err(|_| EjsonError::NotUtf8)?, v)
            }
            Some([Term::Atom(k), v]) => (k.as_str(), v),
            _ => return Err(EjsonError::Key),
        };
        if i > 0 {
            out.push(',');
        }
        string(k, out);
        out.push(':');
        write(v, out)?;
    }
    Ok(())
}

/// The pairs of an EJSON object, or None when `t` is not one.
pub fn pairs(t: &Term) -> Option<&[Term]> {
    t.as_tuple().filter(|o| o.len() == 1)?[0].as_list()
}

/// Appends `s` as a JSON string.
pub fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `t` as JSON text.
pub fn to_json(t: &Term) -> Result<String, EjsonError> {
    let mut out = String::new();
    write(t, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(pairs: Vec<(&str, Term)>) -> Term {
        Term::Tuple(vec![Term::List(
            pairs
                .into_iter()
                .map(|(k, v)| Term::Tuple(vec![Term::Bin(k.as_bytes().to_vec()), v]))
                .collect(),
        )])
    }

    #[test]
    fn ejson_to_json() {
        let t = obj(vec![
            ("a", Term::Int(-3)),
            ("b", Term::Float(1.5)),
            ("s", Term::Bin("é\"\n\u{1}".as_bytes().to_vec())),
            (
                "l",
                Term::List(vec![Term::Atom("true".into()), Term::Atom("null".into())]),
            ),
            ("big", Term::Big("123456789012345678901234567890".into())),
            ("o", obj(vec![])),
        ]);
        let text = to_json(&t).unwrap();
        assert_eq!(
            text,
            r#"{"a":-3,"b":1.5,"s":"é\"\n\u0001","l":[true,null],"big":123456789012345678901234567890,"o":{}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["b"], 1.5);
        assert_eq!(
            to_json(&Term::Atom("couch_partition".into())).unwrap(),
            r#""couch_partition""#
        );
        assert!(to_json(&Term::Tuple(vec![Term::Int(1), Term::Int(2)])).is_err());
        assert!(to_json(&Term::Bin(vec![0xff])).is_err());
    }
}
