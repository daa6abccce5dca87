//! A forward-only JSON reader for the request path: it walks a document
//! once, checking its syntax as it goes, and hands out keys, strings and
//! positions without copying or allocating. The answer checks, the `usage`
//! scan, the error-body reader and the model rewrite all read with it, so
//! a plain answer costs one pass over its bytes (a general deserializer
//! cost about five times as many instructions on a typical answer; see
//! BENCHMARKS.md).
//!
//! What it checks: the grammar of objects, arrays, strings (escapes, no
//! raw control characters, valid UTF-8), numbers and literals, and that
//! nothing follows the document. Nesting is limited to [`MAX_DEPTH`].

/// Deepest nesting read.
pub const MAX_DEPTH: usize = 128;

/// Where a document stops being JSON, and what was expected there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bad {
    pub at: usize,
    pub expected: &'static str,
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not valid JSON at byte {}: expected {}",
            self.at, self.expected
        )
    }
}

/// A reader over one JSON document.
pub struct Reader<'a> {
    b: &'a [u8],
    i: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            b: bytes,
            i: 0,
            depth: 0,
        }
    }

    /// The offset of the next byte.
    pub fn position(&self) -> usize {
        self.i
    }

    fn bad<T>(&self, expected: &'static str) -> Result<T, Bad> {
        Err(Bad {
            at: self.i,
            expected,
        })
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i).copied() {
            self.i += 1;
        }
    }

    /// The next byte that is not white space (not consumed).
    pub fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Enters an object (`{`) or an array (`[`).
    pub fn open(&mut self, c: u8) -> Result<(), Bad> {
        if self.depth >= MAX_DEPTH {
            return self.bad("less nesting");
        }
        if !self.eat(c) {
            return self.bad(if c == b'{' { "an object" } else { "a list" });
        }
        self.depth += 1;
        Ok(())
    }

    /// The next key of the object entered (its raw bytes, escapes kept),
    /// its colon consumed; `None` at the object's end. `first` is true
    /// before the first key and kept by the reader.
    pub fn key(&mut self, first: &mut bool) -> Result<Option<&'a [u8]>, Bad> {
        let mut c = self.peek();
        if c == Some(b'}') {
            self.i += 1;
            self.depth -= 1;
            return Ok(None);
        }
        if !*first {
            if c != Some(b',') {
                return self.bad("',' or '}'");
            }
            self.i += 1;
            c = self.peek();
        }
        *first = false;
        if c != Some(b'"') {
            return self.bad("a key");
        }
        self.i += 1;
        let key = self.string_body()?;
        if self.peek() != Some(b':') {
            return self.bad("':'");
        }
        self.i += 1;
        Ok(Some(key))
    }

    /// True when another item of the array entered follows (read it next);
    /// false at the array's end. `first` as for [`Reader::key`].
    pub fn item(&mut self, first: &mut bool) -> Result<bool, Bad> {
        if self.eat(b']') {
            self.depth -= 1;
            return Ok(false);
        }
        if !*first && !self.eat(b',') {
            return self.bad("',' or ']'");
        }
        *first = false;
        Ok(true)
    }

    /// A string's raw bytes between its quotes (escapes kept).
    pub fn str(&mut self) -> Result<&'a [u8], Bad> {
        if !self.eat(b'"') {
            return self.bad("a string");
        }
        self.string_body()
    }

    /// The rest of a string whose opening quote was read. Its text is
    /// checked on the way: no raw control character (JSON escapes them),
    /// valid UTF-8; plain ASCII runs eight bytes at a time.
    fn string_body(&mut self) -> Result<&'a [u8], Bad> {
        let b = self.b;
        let start = self.i;
        let mut i = start;
        loop {
            let Some(at) = string_stop(b, i) else {
                self.i = b.len();
                return self.bad("the string's closing quote");
            };
            match b[at] {
                b'"' => {
                    self.i = at + 1;
                    return Ok(&b[start..at]);
                }
                b'\\' => {
                    self.i = at;
                    self.escape()?;
                    i = self.i;
                }
                c if c < 0x20 => {
                    self.i = at;
                    return self
                        .bad("no raw control character in a string (escape it: \\n, \\u0000)");
                }
                c => {
                    // A UTF-8 sequence: its lead byte says how long.
                    let width = match c {
                        0xc2..=0xdf => 2,
                        0xe0..=0xef => 3,
                        0xf0..=0xf4 => 4,
                        _ => 0,
                    };
                    let valid = width > 0
                        && b.get(at..at + width)
                            .is_some_and(|seq| std::str::from_utf8(seq).is_ok());
                    if !valid {
                        self.i = at;
                        return self.bad("UTF-8 text in a string");
                    }
                    i = at + width;
                }
            }
        }
    }

    fn escape(&mut self) -> Result<(), Bad> {
        // At the backslash.
        match self.b.get(self.i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.i += 2;
                Ok(())
            }
            Some(b'u')
                if self
                    .b
                    .get(self.i + 2..self.i + 6)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
            {
                self.i += 6;
                Ok(())
            }
            _ => self.bad("an escape"),
        }
    }

    /// Consumes `null` if it is next.
    pub fn null(&mut self) -> Result<bool, Bad> {
        if self.peek() != Some(b'n') {
            return Ok(false);
        }
        self.literal(b"null")?;
        Ok(true)
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), Bad> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            self.bad("true, false or null")
        }
    }

    /// A number; `Some` when it is a non-negative integer that fits.
    pub fn number(&mut self) -> Result<Option<u64>, Bad> {
        self.ws();
        let b = self.b;
        let negative = b.get(self.i) == Some(&b'-');
        if negative {
            self.i += 1;
        }
        // One zero, or digits not starting with one; the value as it goes.
        let mut value = Some(0u64);
        match b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                while let Some(&d) = b.get(self.i).filter(|d| d.is_ascii_digit()) {
                    value = value
                        .and_then(|v| v.checked_mul(10))
                        .and_then(|v| v.checked_add(u64::from(d - b'0')));
                    self.i += 1;
                }
            }
            _ => return self.bad("a number"),
        }
        let mut integer = !negative;
        if b.get(self.i) == Some(&b'.') {
            self.i += 1;
            integer = false;
            if self.digits() == 0 {
                return self.bad("a digit");
            }
        }
        if let Some(b'e' | b'E') = b.get(self.i).copied() {
            self.i += 1;
            integer = false;
            if let Some(b'+' | b'-') = b.get(self.i).copied() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.bad("a digit");
            }
        }
        Ok(value.filter(|_| integer))
    }

    /// Skips a number, checking its grammar without reading its value.
    fn skip_number(&mut self) -> Result<(), Bad> {
        let b = self.b;
        if b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.bad("a number"),
        }
        if b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.bad("a digit");
            }
        }
        if let Some(b'e' | b'E') = b.get(self.i).copied() {
            self.i += 1;
            if let Some(b'+' | b'-') = b.get(self.i).copied() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.bad("a digit");
            }
        }
        Ok(())
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i - start
    }

    /// Skips any value, checking it.
    pub fn skip(&mut self) -> Result<(), Bad> {
        match self.peek() {
            Some(b'"') => self.str().map(|_| ()),
            Some(b'{') => {
                self.open(b'{')?;
                let mut first = true;
                while self.key(&mut first)?.is_some() {
                    self.skip()?;
                }
                Ok(())
            }
            Some(b'[') => {
                self.open(b'[')?;
                let mut first = true;
                while self.item(&mut first)? {
                    self.skip()?;
                }
                Ok(())
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.skip_number(),
            _ => self.bad("a value"),
        }
    }

    /// Skips any value, checking it, and returns its bytes as written.
    pub fn raw(&mut self) -> Result<&'a [u8], Bad> {
        self.ws();
        let start = self.i;
        self.skip()?;
        Ok(&self.b[start..self.i])
    }

    /// Only white space remains.
    pub fn done(&mut self) -> Result<(), Bad> {
        if self.peek().is_some() {
            return self.bad("the end of the document");
        }
        Ok(())
    }
}

/// The first byte at or after `from` that ends a run of plain string text:
/// `"`, `\\`, a control character or a byte that is not ASCII. Eight bytes
/// at a time (no call overhead for the short strings JSON is full of), then
/// byte by byte.
fn string_stop(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = ONES * b'"' as u64;
    const BACKSLASHES: u64 = ONES * b'\\' as u64;
    const SPACES: u64 = ONES * 0x20;
    // High bits set for zero bytes; the lowest one is exact.
    let zeros = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 8) {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let x = u64::from_le_bytes(bytes);
        // Quotes, backslashes, bytes below 0x20 and bytes from 0x80: the
        // lowest flag of each test is exact, so the lowest of all is.
        let hits = zeros(x ^ QUOTES)
            | zeros(x ^ BACKSLASHES)
            | (x.wrapping_sub(SPACES) & !x & HIGHS)
            | (x & HIGHS);
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b.get(i..)?.iter().position(|&c| is_stop(c)).map(|n| i + n)
}

fn is_stop(c: u8) -> bool {
    c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c)
}

/// A JSON string's text, escapes decoded, from its raw bytes; `None` when
/// it is not valid UTF-8 or an escape is broken.
pub fn unescape(raw: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    match unescape_bytes(raw)? {
        std::borrow::Cow::Borrowed(b) => {
            std::str::from_utf8(b).ok().map(std::borrow::Cow::Borrowed)
        }
        std::borrow::Cow::Owned(v) => String::from_utf8(v).ok().map(std::borrow::Cow::Owned),
    }
}

/// Writes one JSON document into a byte buffer. Keys and values are
/// written in order; commas are placed by the writer. Strings taken from a
/// [`Reader`] are copied as they are, escapes included ([`Writer::raw_str`]),
/// so text crosses from one document to another without being decoded.
#[derive(Debug, Default)]
pub struct Writer {
    out: Vec<u8>,
    /// For each open object or array, a bit: whether it has a member yet
    /// (the innermost is the lowest bit).
    open: u128,
    /// How many objects and arrays are open.
    depth: u32,
    /// A key was written and its value is due (no comma before it).
    after_key: bool,
}

impl Writer {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            out: Vec::with_capacity(n),
            open: 0,
            depth: 0,
            after_key: false,
        }
    }

    /// The bytes written.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }

    /// The bytes written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    /// Places a comma before a value or key when one is due.
    #[inline]
    fn sep(&mut self) {
        if self.after_key {
            self.after_key = false;
            return;
        }
        if self.depth > 0 {
            if self.open & 1 == 1 {
                self.out.push(b',');
            }
            self.open |= 1;
        }
    }

    #[inline]
    fn push_level(&mut self) {
        // Deeper than 128 levels, the outer levels' bits are lost: such
        // documents are not written here.
        self.open <<= 1;
        self.depth += 1;
    }

    #[inline]
    fn pop_level(&mut self) {
        self.open >>= 1;
        self.depth = self.depth.saturating_sub(1);
    }

    #[inline]
    pub fn begin_object(&mut self) -> &mut Self {
        self.sep();
        self.out.push(b'{');
        self.push_level();
        self
    }

    #[inline]
    pub fn end_object(&mut self) -> &mut Self {
        self.pop_level();
        self.out.push(b'}');
        self
    }

    #[inline]
    pub fn begin_array(&mut self) -> &mut Self {
        self.sep();
        self.out.push(b'[');
        self.push_level();
        self
    }

    #[inline]
    pub fn end_array(&mut self) -> &mut Self {
        self.pop_level();
        self.out.push(b']');
        self
    }

    /// A key (plain ASCII, no escapes needed); its value comes next.
    // Always inlined: keys are literals, so their copies become moves.
    #[inline(always)]
    pub fn key(&mut self, key: &str) -> &mut Self {
        self.sep();
        self.out.reserve(key.len() + 3);
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.after_key = true;
        self
    }

    /// A string from its raw JSON form (escapes kept, no quotes).
    #[inline]
    pub fn raw_str(&mut self, raw: &[u8]) -> &mut Self {
        self.sep();
        self.out.push(b'"');
        self.out.extend_from_slice(raw);
        self.out.push(b'"');
        self
    }

    /// A string, escaped.
    pub fn str(&mut self, text: &str) -> &mut Self {
        self.sep();
        self.out.push(b'"');
        escape_into(text.as_bytes(), &mut self.out);
        self.out.push(b'"');
        self
    }

    /// A value already written as JSON (an object, a number).
    #[inline]
    pub fn raw(&mut self, json: &[u8]) -> &mut Self {
        self.sep();
        self.out.extend_from_slice(json);
        self
    }

    pub fn u64(&mut self, n: u64) -> &mut Self {
        self.sep();
        let mut buf = itoa::Buffer::new();
        self.out.extend_from_slice(buf.format(n).as_bytes());
        self
    }

    #[inline]
    pub fn bool(&mut self, b: bool) -> &mut Self {
        self.raw(if b { b"true" } else { b"false" })
    }

    #[inline]
    pub fn null(&mut self) -> &mut Self {
        self.raw(b"null")
    }
}

/// Escapes `text` (UTF-8 bytes) as the inside of a JSON string: quotes,
/// backslashes and control characters; everything else is copied.
pub fn escape_into(text: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &c) in text.iter().enumerate() {
        let escaped: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                out.extend_from_slice(&text[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 15)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&text[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&text[start..]);
}

/// The raw JSON form (escaped, no quotes) of `text`.
pub fn escaped(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 8);
    escape_into(text, &mut out);
    out
}

/// The bytes a raw JSON string stands for (escapes decoded); `None` when
/// an escape is broken or stands for an unpaired surrogate.
pub fn unescape_bytes(raw: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    if !raw.contains(&b'\\') {
        return Some(std::borrow::Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *raw.get(i + 1)?;
        i += 2;
        let byte = match e {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let mut code = hex4(raw.get(i..i + 4)?)?;
                i += 4;
                if (0xD800..0xDC00).contains(&code) {
                    // A high surrogate: its low one must follow.
                    if raw.get(i..i + 2)? != b"\\u" {
                        return None;
                    }
                    let low = hex4(raw.get(i + 2..i + 6)?)?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return None;
                    }
                    i += 6;
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                }
                let ch = char::from_u32(code)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            _ => return None,
        };
        out.push(byte);
    }
    Some(std::borrow::Cow::Owned(out))
}

fn hex4(h: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(h).ok()?;
    u32::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(text: &str) -> Result<(), Bad> {
        let mut r = Reader::new(text.as_bytes());
        r.skip()?;
        r.done()
    }

    /// Valid documents pass; each kind of broken one is caught where it
    /// breaks.
    #[test]
    fn checks_the_grammar() {
        for ok in [
            r#"{"a": [1, -2.5e3, true, false, null, "x\"y\\u00e9"], "b": {}, "c": []}"#,
            " 0 ",
            r#""\n""#,
            "[[[]]]",
        ] {
            assert_eq!(valid(ok), Ok(()), "{ok}");
        }
        for (bad, at) in [
            ("{", 1),
            (r#"{"a" 1}"#, 5),
            (r#"{"a": 1,}"#, 8),
            ("[1 2]", 3),
            (r#""abc"#, 4),
            (r#""\x""#, 1),
            ("01", 1),
            ("1.", 2),
            ("nul", 0),
            ("{} x", 3),
            ("<html>", 0),
            ("", 0),
        ] {
            assert_eq!(valid(bad).map_err(|e| e.at), Err(at), "{bad}");
        }
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert_eq!(valid(&deep).unwrap_err().expected, "less nesting");
    }

    /// Strings are text: a raw control character or a byte that is not
    /// UTF-8 is refused where it stands; escaped ones and any UTF-8 pass.
    #[test]
    fn strings_are_text() {
        let check = |b: &[u8]| {
            let mut r = Reader::new(b);
            r.skip().and_then(|()| r.done())
        };
        assert_eq!(
            check("{\"k\": \"d\u{e9}j\u{e0} \u{1F600} \\n\\u0000\"}".as_bytes()),
            Ok(())
        );
        let e = check(b"{\"k\": \"a\x00b\"}").unwrap_err();
        assert_eq!(e.at, 8);
        assert!(e.expected.contains("control character"), "{e}");
        assert_eq!(check(b"[\"tab\there\"]").unwrap_err().at, 5);
        let e = check(b"{\"k\": \"ok \xff\xfe\"}").unwrap_err();
        assert_eq!((e.at, e.expected), (10, "UTF-8 text in a string"));
        // In keys too.
        assert_eq!(check(b"{\"\xc3\": 1}").unwrap_err().at, 2);
    }

    /// The stop finder agrees with a plain search at every offset and
    /// length (its eight-byte steps included), for every kind of stop.
    #[test]
    fn finds_where_plain_text_stops() {
        let text =
            "abcdefghijklmnop\"q\\rstu\tvwxyz0123456789\u{e9}\"tail\u{1}~ \u{7f}end".as_bytes();
        for from in 0..text.len() {
            for end in from..=text.len() {
                let b = &text[..end];
                let want = b[from..].iter().position(|&c| is_stop(c)).map(|n| from + n);
                assert_eq!(string_stop(b, from), want, "{from}..{end}");
            }
        }
        // Every byte value, at every place in a word.
        for c in 0..=255u8 {
            for at in 0..8 {
                let mut b = [b'a'; 16];
                b[at] = c;
                let want = is_stop(c).then_some(at);
                assert_eq!(string_stop(&b, 0), want, "byte {c:#x} at {at}");
            }
        }
    }

    /// Keys and items come in order with their values; numbers read as
    /// integers when they are.
    #[test]
    fn walks_objects_and_arrays() {
        let mut r = Reader::new(br#"{"n": 7, "f": 1.5, "s": "a\"b", "l": [1, 2]}"#);
        r.open(b'{').unwrap();
        let mut first = true;
        let mut seen = Vec::new();
        while let Some(k) = r.key(&mut first).unwrap() {
            match k {
                b"n" => assert_eq!(r.number().unwrap(), Some(7)),
                b"f" => assert_eq!(r.number().unwrap(), None),
                b"s" => assert_eq!(unescape(r.str().unwrap()).unwrap(), "a\"b"),
                b"l" => {
                    r.open(b'[').unwrap();
                    let mut f = true;
                    let mut n = 0;
                    while r.item(&mut f).unwrap() {
                        r.skip().unwrap();
                        n += 1;
                    }
                    assert_eq!(n, 2);
                }
                _ => unreachable!(),
            }
            seen.push(k.to_vec());
        }
        r.done().unwrap();
        assert_eq!(seen.len(), 4);
    }
}
