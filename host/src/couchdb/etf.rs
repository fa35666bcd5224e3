//! A decoder for Erlang's external term format (`term_to_binary`), the encoding of every
//! term in a CouchDB file. Only what CouchDB writes: integers, floats, atoms, binaries,
//! tuples, lists, strings, maps.

#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Int(i64),
    /// An integer too big for i64, in decimal (a document may hold one; never a pointer
    /// or a count).
    Big(String),
    Float(f64),
    Atom(String),
    Bin(Vec<u8>),
    Tuple(Vec<Term>),
    List(Vec<Term>),
    Map(Vec<(Term, Term)>),
}

impl Term {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Term::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_tuple(&self) -> Option<&[Term]> {
        match self {
            Term::Tuple(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Term]> {
        match self {
            Term::List(l) => Some(l),
            _ => None,
        }
    }

    pub fn is_atom(&self, name: &str) -> bool {
        matches!(self, Term::Atom(a) if a == name)
    }

    /// A binary or a list of byte-sized integers (an Erlang string) as text.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Term::Bin(b) => String::from_utf8(b.clone()).ok(),
            Term::List(l) => l
                .iter()
                .map(|t| t.as_int().and_then(|i| u8::try_from(i).ok()))
                .collect::<Option<Vec<u8>>>()
                .and_then(|b| String::from_utf8(b).ok()),
            _ => None,
        }
    }

    /// A field of an EJSON object (`{[{Key, Value}, ...]}`).
    pub fn field(&self, key: &str) -> Option<&Term> {
        let pairs = self.as_tuple().filter(|t| t.len() == 1)?[0].as_list()?;
        pairs.iter().find_map(|p| match p.as_tuple() {
            Some([Term::Bin(k), v]) if k == key.as_bytes() => Some(v),
            _ => None,
        })
    }

    /// The keys of an EJSON object.
    pub fn keys(&self) -> Vec<String> {
        let Some(pairs) = self
            .as_tuple()
            .filter(|t| t.len() == 1)
            .and_then(|t| t[0].as_list())
        else {
            return Vec::new();
        };
        pairs
            .iter()
            .filter_map(|p| match p.as_tuple() {
                Some([k, _]) => k.as_text(),
                _ => None,
            })
            .collect()
    }
}

/// Why bytes are not a term this reader accepts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TermError {
    #[error("term truncated at byte {0}")]
    Truncated(usize),
    #[error("bad element count {count} at byte {pos}")]
    Count { count: usize, pos: usize },
    #[error("term nested too deeply")]
    TooDeep,
    #[error("unsupported term tag {tag} at byte {pos}")]
    Tag { tag: u8, pos: usize },
    #[error("not an Erlang term (no version byte 131)")]
    NotATerm,
    #[error("zlib-compressed term (file_compression = deflate_N) is not supported")]
    Deflate,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], TermError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or(TermError::Truncated(self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, TermError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<usize, TermError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]) as usize)
    }
    fn u32(&mut self) -> Result<usize, TermError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
    }

    /// Element counts come from the data: bound them by what is left, so a damaged
    /// length cannot ask for a huge allocation.
    fn count(&self, n: usize) -> Result<usize, TermError> {
        if n > self.b.len() - self.pos {
            return Err(TermError::Count {
                count: n,
                pos: self.pos,
            });
        }
        Ok(n)
    }

    fn term(&mut self, depth: usize) -> Result<Term, TermError> {
        if depth > 200 {
            return Err(TermError::TooDeep);
        }
        let tag = self.u8()?;
        Ok(match tag {
            97 => Term::Int(self.u8()? as i64),
            98 => {
                let s = self.take(4)?;
                Term::Int(i32::from_be_bytes([s[0], s[1], s[2], s[3]]) as i64)
            }
            70 => {
                let s = self.take(8)?;
                let bytes = [s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]];
                Term::Float(f64::from_be_bytes(bytes))
            }
            99 => {
                let s = self.take(31)?;
                let text = String::from_utf8_lossy(s);
                Term::Float(text.trim_end_matches('\0').trim().parse().unwrap_or(0.0))
            }
            100 | 118 => {
                let n = self.u16()?;
                Term::Atom(String::from_utf8_lossy(self.take(n)?).into_owned())
            }
            115 | 119 => {
                let n = self.u8()? as usize;
                Term::Atom(String::from_utf8_lossy(self.take(n)?).into_owned())
            }
            104 | 105 => {
                let n = if tag == 104 {
                    self.u8()? as usize
                } else {
                    self.u32()?
                };
                let n = self.count(n)?;
                Term::Tuple(
                    (0..n)
                        .map(|_| self.term(depth + 1))
                        .collect::<Result<_, _>>()?,
                )
            }
            106 => Term::List(Vec::new()),
            107 => {
                let n = self.u16()?;
                Term::List(self.take(n)?.iter().map(|&b| Term::Int(b as i64)).collect())
            }
            108 => {
                let n = self.u32()?;
                let n = self.count(n)?;
                let items = (0..n)
                    .map(|_| self.term(depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                // The tail: [] for a proper list.
                self.term(depth + 1)?;
                Term::List(items)
            }
            109 => {
                let n = self.u32()?;
                Term::Bin(self.take(n)?.to_vec())
            }
            77 => {
                let n = self.u32()?;
                self.u8()?;
                Term::Bin(self.take(n)?.to_vec())
            }
            110 | 111 => {
                let n = if tag == 110 {
                    self.u8()? as usize
                } else {
                    self.u32()?
                };
                let negative = self.u8()? == 1;
                let digits = self.take(n)?;
                if n <= 7 {
                    let v = digits
                        .iter()
                        .rev()
                        .fold(0i64, |acc, &d| (acc << 8) | d as i64);
                    Term::Int(if negative { -v } else { v })
                } else {
                    Term::Big(decimal(digits, negative))
                }
            }
            116 => {
                let n = self.u32()?;
                let n = self.count(n)?;
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    pairs.push((self.term(depth + 1)?, self.term(depth + 1)?));
                }
                Term::Map(pairs)
            }
            tag => {
                return Err(TermError::Tag {
                    tag,
                    pos: self.pos - 1,
                })
            }
        })
    }
}

/// A little-endian magnitude in base 256 as decimal text.
fn decimal(le: &[u8], negative: bool) -> String {
    let mut mag: Vec<u32> = le.iter().rev().map(|&b| b as u32).collect();
    let mut groups = Vec::new();
    while mag.iter().any(|&d| d != 0) {
        // Divide by 10^9, keeping the remainder.
        let mut rem = 0u64;
        for d in &mut mag {
            let cur = (rem << 8) | *d as u64;
            *d = (cur / 1_000_000_000) as u32;
            rem = cur % 1_000_000_000;
        }
        groups.push(rem);
    }
    let mut s = String::from(if negative { "-" } else { "" });
    match groups.pop() {
        None => return "0".into(),
        Some(top) => s.push_str(&top.to_string()),
    }
    for g in groups.iter().rev() {
        s.push_str(&format!("{g:09}"));
    }
    s
}

/// Decodes `term_to_binary` output (starting with the version byte 131).
pub fn decode(bytes: &[u8]) -> Result<Term, TermError> {
    match bytes.first() {
        Some(131) => {}
        _ => return Err(TermError::NotATerm),
    }
    if bytes.get(1) == Some(&80) {
        return Err(TermError::Deflate);
    }
    let mut r = Reader { b: bytes, pos: 1 };
    r.term(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_couchdb_writes() {
        // term_to_binary({kv_node, [{<<"db">>, 42}], "ab", -300, 1.5})
        let mut b = vec![131, 104, 5, 119, 7];
        b.extend(b"kv_node");
        b.extend([108, 0, 0, 0, 1, 104, 2, 109, 0, 0, 0, 2]);
        b.extend(b"db");
        b.extend([97, 42, 106, 107, 0, 2, b'a', b'b', 98]);
        b.extend((-300i32).to_be_bytes());
        b.push(70);
        b.extend(1.5f64.to_be_bytes());
        let t = decode(&b).expect("decodes");
        let parts = t.as_tuple().expect("tuple");
        assert!(parts[0].is_atom("kv_node"));
        assert_eq!(parts[2].as_text().as_deref(), Some("ab"));
        assert_eq!(parts[3], Term::Int(-300));
        assert_eq!(parts[4], Term::Float(1.5));
        // Damage: truncation and absurd counts are errors, not panics or huge allocations.
        for cut in 0..b.len() {
            let _ = decode(&b[..cut]);
        }
        assert!(decode(&[131, 108, 255, 255, 255, 255]).is_err());
        // term_to_binary(123456789012345678901234567890) and its negation
        let mag = [
            0xd2, 0x0a, 0x3f, 0x4e, 0xee, 0xe0, 0x73, 0xc3, 0xf6, 0x0f, 0xe9, 0x8e, 0x01,
        ];
        for (sign, text) in [
            (0u8, "123456789012345678901234567890"),
            (1, "-123456789012345678901234567890"),
        ] {
            let mut b = vec![131, 110, mag.len() as u8, sign];
            b.extend(mag);
            assert_eq!(decode(&b).unwrap(), Term::Big(text.into()));
        }
    }
}
