//! A one-pass JSON validator that finds the value at a dotted path without building anything.
//!
//! [`find`] reads the whole document once: it checks that all of it is valid JSON and returns
//! the value at the path as a [`Found`] borrowed from the document (only that value is ever
//! decoded, by the caller). No allocation unless a key on the path holds escapes.
//!
//! What "valid" means is exactly what `serde_json::from_slice::<serde_json::Value>` accepts
//! (the tests check this against serde_json on many documents):
//! - RFC 8259 grammar: one value with optional whitespace (space, tab, CR, LF) around it; no
//!   trailing commas, no leading zeros (`01`), a digit on both sides of `.`, `e` needs digits;
//! - strings are UTF-8 without raw control bytes (< 0x20); escapes are `\" \\ \/ \b \f \n \r \t`
//!   and `\uXXXX`, where surrogates must come in (high, low) pairs;
//! - numbers must fit an f64 (`1e400` is refused; tiny ones round to 0);
//! - at most [`MAX_DEPTH`] nested arrays and objects.
//!
//! Duplicate keys: the LAST occurrence wins (as in serde_json's `Value`), also on the way down a
//! path: in `{"a": {"b": 1}, "a": 2}` the path `a.b` is missing.
//!
//! How it stays fast: string contents are skipped 8 bytes at a time (SWAR on a `u64`: one test
//! finds a quote, a backslash or a control byte in the word); non-ASCII bytes are only noted on
//! the way (one OR per word) and the document goes through `std::str::from_utf8` at the end
//! only when it has some; the nesting stack outside the path is a bitset (`u128`), not a Vec;
//! the cursor is a slice matched with slice patterns, so each step is one length check. In
//! WebAssembly (Cranelift) calls and spills cost more than natively: the hot paths are inlined
//! into [`Scanner::on_path`] and keep their running state in locals.

/// Containers (arrays and objects) that may be open at once, as in serde_json.
pub const MAX_DEPTH: usize = 127;

/// The document is not valid JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// The value found at the path, borrowed from the document and already validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Found<'a> {
    Null,
    Bool(bool),
    /// The number's text (RFC 8259 grammar, within f64 range).
    Number(&'a [u8]),
    /// A string's raw content between the quotes; `escaped` when it holds backslash escapes.
    Str {
        raw: &'a [u8],
        escaped: bool,
    },
    /// An array or an object.
    Compound,
}

/// Validates `doc` and returns the value at `path` (object keys from the top), `None` when an
/// object on the way lacks the key or a value on the way is not an object.
pub fn find<'a, S: AsRef<str>>(doc: &'a [u8], path: &[S]) -> Result<Option<Found<'a>>, Invalid> {
    let mut s = Scanner { rest: doc, high: 0 };
    let found = s.on_path(path, 0)?;
    if s.token().is_some() {
        return Err(Invalid);
    }
    // Non-ASCII bytes can only have passed inside strings: check the UTF-8 once, if any.
    if s.high & HIGH_BITS != 0 && std::str::from_utf8(doc).is_err() {
        return Err(Invalid);
    }
    Ok(found)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = ONES * 0x80;

/// Bit 7 of each byte of `x` that is `"`, `\` or below 0x20. The lowest set bit is exact (a
/// borrow can only flag bytes above a true hit), so `trailing_zeros() / 8` is the first one.
#[inline(always)]
fn specials(x: u64) -> u64 {
    let quote = x ^ (ONES * b'"' as u64);
    let backslash = x ^ (ONES * b'\\' as u64);
    let zero_in = |v: u64| v.wrapping_sub(ONES) & !v;
    (zero_in(quote) | zero_in(backslash) | (x.wrapping_sub(ONES * 0x20) & !x)) & HIGH_BITS
}

#[inline(always)]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// Skips a run of ASCII digits.
#[inline(always)]
fn digits(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    &s[n..]
}

fn hex(b: u8) -> Option<u16> {
    match b {
        b'0'..=b'9' => Some((b - b'0') as u16),
        b'a'..=b'f' => Some((b - b'a' + 10) as u16),
        b'A'..=b'F' => Some((b - b'A' + 10) as u16),
        _ => None,
    }
}

fn hex4(a: u8, b: u8, c: u8, d: u8) -> Result<u16, Invalid> {
    match (hex(a), hex(b), hex(c), hex(d)) {
        (Some(a), Some(b), Some(c), Some(d)) => Ok(a << 12 | b << 8 | c << 4 | d),
        _ => Err(Invalid),
    }
}

/// Reads one escape (after its backslash) and returns the code point and the rest; a `\u`
/// high surrogate must be followed by a `\u` low surrogate.
fn escape(s: &[u8]) -> Result<(char, &[u8]), Invalid> {
    let (c, rest) = match s {
        [b'"', rest @ ..] => ('"', rest),
        [b'\\', rest @ ..] => ('\\', rest),
        [b'/', rest @ ..] => ('/', rest),
        [b'b', rest @ ..] => ('\u{8}', rest),
        [b'f', rest @ ..] => ('\u{c}', rest),
        [b'n', rest @ ..] => ('\n', rest),
        [b'r', rest @ ..] => ('\r', rest),
        [b't', rest @ ..] => ('\t', rest),
        [b'u', a, b, c, d, rest @ ..] => match hex4(*a, *b, *c, *d)? {
            0xD800..=0xDBFF => match rest {
                [b'\\', b'u', e, f, g, h, rest @ ..] => {
                    let hi = hex4(*a, *b, *c, *d)? as u32;
                    let lo = hex4(*e, *f, *g, *h)? as u32;
                    if !(0xDC00..=0xDFFF).contains(&lo) {
                        return Err(Invalid);
                    }
                    let c = 0x10000 + ((hi - 0xD800) << 10 | (lo - 0xDC00));
                    (char::from_u32(c).ok_or(Invalid)?, rest)
                }
                _ => return Err(Invalid),
            },
            n => (char::from_u32(n as u32).ok_or(Invalid)?, rest),
        },
        _ => return Err(Invalid),
    };
    Ok((c, rest))
}

/// The content of a string that holds escapes, unescaped. `raw` was validated by the scanner.
pub fn unescape(raw: &[u8]) -> Result<String, Invalid> {
    let mut out = Vec::with_capacity(raw.len());
    let mut s = raw;
    while let Some(at) = s.iter().position(|&b| b == b'\\') {
        out.extend_from_slice(&s[..at]);
        let (c, rest) = escape(&s[at + 1..])?;
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        s = rest;
    }
    out.extend_from_slice(s);
    String::from_utf8(out).map_err(|_| Invalid)
}

/// Whether an unescaped key equals `want`, without allocating when it holds no escapes.
fn key_is(raw: &[u8], escaped: bool, want: &str) -> Result<bool, Invalid> {
    if escaped {
        Ok(unescape(raw)? == want)
    } else {
        Ok(raw == want.as_bytes())
    }
}

struct Scanner<'a> {
    /// What is left of the document.
    rest: &'a [u8],
    /// The OR of the string bytes seen (and some bytes after them): bit 7 of a byte set means
    /// the document has non-ASCII bytes and needs the UTF-8 check.
    high: u64,
}

impl<'a> Scanner<'a> {
    /// The next non-whitespace byte and what follows it; `rest` is left AT the byte.
    #[inline(always)]
    fn token(&mut self) -> Option<(u8, &'a [u8])> {
        let (&b, tail) = self.rest.split_first()?;
        // Every token byte is above the space; compact JSON has no whitespace at all.
        if b > b' ' {
            return Some((b, tail));
        }
        self.token_after_ws()
    }

    #[inline(never)]
    fn token_after_ws(&mut self) -> Option<(u8, &'a [u8])> {
        loop {
            let (&b, tail) = self.rest.split_first()?;
            if !is_ws(b) {
                return Some((b, tail));
            }
            self.rest = tail;
        }
    }

    /// Consumes the next non-whitespace byte, which must be `want`.
    #[inline(always)]
    fn expect(&mut self, want: u8) -> Result<(), Invalid> {
        match self.token() {
            Some((b, tail)) if b == want => {
                self.rest = tail;
                Ok(())
            }
            _ => Err(Invalid),
        }
    }

    /// Reads a string whose opening quote was consumed; returns its raw content and whether
    /// it holds escapes.
    #[inline(always)]
    fn string(&mut self) -> Result<(&'a [u8], bool), Invalid> {
        let start = self.rest;
        let mut s = start;
        let mut escaped = false;
        let mut high = 0;
        loop {
            while let Some((word, tail)) = s.split_first_chunk::<8>() {
                let x = u64::from_le_bytes(*word);
                high |= x;
                let hits = specials(x);
                if hits != 0 {
                    s = &s[(hits.trailing_zeros() / 8) as usize..];
                    break;
                }
                s = tail;
            }
            let (&b, tail) = s.split_first().ok_or(Invalid)?;
            match b {
                b'"' => {
                    self.rest = tail;
                    self.high |= high;
                    return Ok((&start[..start.len() - s.len()], escaped));
                }
                b'\\' => {
                    escaped = true;
                    s = escape(tail)?.1;
                }
                0..0x20 => return Err(Invalid),
                _ => {
                    high |= b as u64;
                    s = tail;
                }
            }
        }
    }

    /// Reads a number at `rest` and returns its text.
    #[inline(always)]
    fn number(&mut self) -> Result<&'a [u8], Invalid> {
        let start = self.rest;
        let mut s = match start {
            [b'-', tail @ ..] => tail,
            _ => start,
        };
        let int_start = s.len();
        s = match s {
            [b'0', tail @ ..] => tail,
            [b'1'..=b'9', tail @ ..] => digits(tail),
            _ => return Err(Invalid),
        };
        let int_len = int_start - s.len();
        if let [b'.', tail @ ..] = s {
            s = digits(tail);
            if s.len() == tail.len() {
                return Err(Invalid);
            }
        }
        // The value is below 10^(int_len + positive exponent): when that is at most 10^308 it
        // fits an f64; anything else (rare) is decided by serde_json itself.
        let mut in_range = int_len <= 308;
        if let [b'e' | b'E', tail @ ..] = s {
            let (negative, tail) = match tail {
                [b'-', tail @ ..] => (true, tail),
                [b'+', tail @ ..] => (false, tail),
                _ => (false, tail),
            };
            s = digits(tail);
            let exp = &tail[..tail.len() - s.len()];
            if exp.is_empty() {
                return Err(Invalid);
            }
            if !negative {
                in_range = exp.len() <= 3
                    && int_len + exp.iter().fold(0, |n, d| n * 10 + (d - b'0') as usize) <= 308;
            }
        }
        let text = &start[..start.len() - s.len()];
        self.rest = s;
        if in_range || serde_json::from_slice::<serde_json::Number>(text).is_ok() {
            Ok(text)
        } else {
            Err(Invalid)
        }
    }

    /// Reads the rest of a literal whose first byte is at `rest`.
    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> Result<(), Invalid> {
        match self.rest.strip_prefix(word) {
            Some(tail) => {
                self.rest = tail;
                Ok(())
            }
            None => Err(Invalid),
        }
    }

    /// Reads an object key and its colon (the key's quote is next).
    #[inline(always)]
    fn key(&mut self) -> Result<(&'a [u8], bool), Invalid> {
        self.expect(b'"')?;
        let key = self.string()?;
        self.expect(b':')?;
        Ok(key)
    }

    /// Reads and skips one value nested in `depth` open containers.
    fn skip(&mut self, depth: usize) -> Result<(), Invalid> {
        // Bit i of `stack`: whether the container opened i levels above the innermost one is
        // an object (else an array). `open` containers of this value are open.
        let mut stack: u128 = 0;
        let mut open = 0;
        let room = MAX_DEPTH.saturating_sub(depth);
        'value: loop {
            let (b, tail) = self.token().ok_or(Invalid)?;
            match b {
                b'"' => {
                    self.rest = tail;
                    self.string()?;
                }
                b'-' | b'0'..=b'9' => {
                    self.number()?;
                }
                b'{' | b'[' => {
                    if open == room {
                        return Err(Invalid);
                    }
                    self.rest = tail;
                    let object = b == b'{';
                    match self.token() {
                        Some((b'}', tail)) if object => self.rest = tail,
                        Some((b']', tail)) if !object => self.rest = tail,
                        _ => {
                            stack = stack << 1 | object as u128;
                            open += 1;
                            if object {
                                self.key()?;
                            }
                            continue 'value;
                        }
                    }
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => return Err(Invalid),
            }
            // After a value: a comma goes on to the next one, a bracket closes a container.
            while open > 0 {
                let (b, tail) = self.token().ok_or(Invalid)?;
                self.rest = tail;
                let object = stack & 1 == 1;
                match b {
                    b',' => {
                        if object {
                            self.key()?;
                        }
                        continue 'value;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return Err(Invalid),
                }
                stack >>= 1;
                open -= 1;
            }
            return Ok(());
        }
    }

    /// Reads the value at the end of the path.
    fn field(&mut self, depth: usize) -> Result<Found<'a>, Invalid> {
        let (b, tail) = self.token().ok_or(Invalid)?;
        Ok(match b {
            b'"' => {
                self.rest = tail;
                let (raw, escaped) = self.string()?;
                Found::Str { raw, escaped }
            }
            b'-' | b'0'..=b'9' => Found::Number(self.number()?),
            b't' => {
                self.literal(b"true")?;
                Found::Bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                Found::Bool(false)
            }
            b'n' => {
                self.literal(b"null")?;
                Found::Null
            }
            _ => {
                self.skip(depth)?;
                Found::Compound
            }
        })
    }

    /// Reads one value nested in `depth` open containers and returns what is at `path` in it.
    fn on_path<S: AsRef<str>>(
        &mut self,
        path: &[S],
        depth: usize,
    ) -> Result<Option<Found<'a>>, Invalid> {
        let Some((want, below)) = path.split_first() else {
            return self.field(depth).map(Some);
        };
        let want = want.as_ref();
        match self.token() {
            Some((b'{', tail)) if depth < MAX_DEPTH => self.rest = tail,
            _ => {
                self.skip(depth)?;
                return Ok(None);
            }
        }
        let depth = depth + 1;
        if let Some((b'}', tail)) = self.token() {
            self.rest = tail;
            return Ok(None);
        }
        let mut found = None;
        loop {
            let (raw, escaped) = self.key()?;
            if key_is(raw, escaped, want)? {
                found = self.on_path(below, depth)?;
            } else {
                // Most values beside the path are strings or numbers: read those here rather
                // than in `skip`, which is made for nesting (and, not inlined, costs a call).
                match self.token() {
                    Some((b'"', tail)) => {
                        self.rest = tail;
                        self.string()?;
                    }
                    Some((b'-' | b'0'..=b'9', _)) => {
                        self.number()?;
                    }
                    _ => self.skip(depth)?,
                }
            }
            let (b, tail) = self.token().ok_or(Invalid)?;
            self.rest = tail;
            match b {
                b',' => {}
                b'}' => return Ok(found),
                _ => return Err(Invalid),
            }
        }
    }
}
