//! Reading requests and answers into the plain types of each API (see
//! [`super::openai::chat`] and [`super::anthropic::messages`]) with the
//! forward-only [`Reader`]: strings and nested JSON stay borrowed from the
//! document, as written ([`Str`], [`Raw`]), so they cross to another
//! document without being decoded. A value that breaks a rule is an
//! [`Invalid`] naming its field's path; a field with no counterpart in the
//! other API family is noted in [`Unsupported`] as it is read.
//!
//! The types are plain Rust types, read and written here rather than
//! derived with serde: a serde pass over an answer cost about three times
//! the instructions of this reader (see BENCHMARKS.md), and translation
//! reads and writes both the request and the answer, within a budget of 30%
//! over a passthrough. Writing borrowed strings back as they were read also
//! keeps every escape exactly as the app or the backend wrote it.

use std::borrow::Cow;
use std::fmt;

use crate::json::{Bad, Reader, Writer, escaped, unescape, unescape_bytes};

/// A JSON string as written (escapes kept, no quotes).
#[derive(Clone, PartialEq, Eq)]
pub struct Str<'a>(pub Cow<'a, [u8]>);

impl<'a> Str<'a> {
    pub fn borrowed(raw: &'a [u8]) -> Self {
        Str(Cow::Borrowed(raw))
    }

    /// The JSON string of `text`.
    pub fn from_text(text: &str) -> Str<'static> {
        Str(Cow::Owned(escaped(text.as_bytes())))
    }

    /// The JSON string of bytes (UTF-8) that are themselves JSON text, as a
    /// tool call's arguments hold their object.
    pub fn of_json(json: &[u8]) -> Str<'static> {
        Str(Cow::Owned(escaped(json)))
    }

    pub fn raw(&self) -> &[u8] {
        &self.0
    }

    /// The text, escapes decoded.
    pub fn text(&self) -> Option<Cow<'_, str>> {
        unescape(&self.0)
    }

    /// The bytes, escapes decoded.
    pub fn bytes(&self) -> Option<Cow<'_, [u8]>> {
        unescape_bytes(&self.0)
    }

    pub fn is(&self, text: &str) -> bool {
        *self.0 == *text.as_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn write(&self, w: &mut Writer) {
        w.raw_str(&self.0);
    }
}

impl fmt::Debug for Str<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// A JSON value as written (an object, a number).
#[derive(Clone, PartialEq, Eq)]
pub struct Raw<'a>(pub Cow<'a, [u8]>);

impl Raw<'_> {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn write(&self, w: &mut Writer) {
        w.raw(&self.0);
    }
}

impl fmt::Debug for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.0))
    }
}

/// A value that writes itself into a JSON document.
pub trait Json {
    fn write_to(&self, w: &mut Writer);
}

impl Json for Str<'_> {
    fn write_to(&self, w: &mut Writer) {
        self.write(w);
    }
}

impl Json for Raw<'_> {
    fn write_to(&self, w: &mut Writer) {
        self.write(w);
    }
}

impl Json for u64 {
    fn write_to(&self, w: &mut Writer) {
        w.u64(*self);
    }
}

impl Json for bool {
    fn write_to(&self, w: &mut Writer) {
        w.bool(*self);
    }
}

/// Writes `"key": value` when there is a value. (These helpers are
/// always inlined, as the writer's `key` is: keys are literals.)
#[inline(always)]
pub fn put<T: Json>(w: &mut Writer, key: &str, value: Option<&T>) {
    if let Some(v) = value {
        w.key(key);
        v.write_to(w);
    }
}

/// Writes `"key": value`, or `"key": null` when there is none.
#[inline(always)]
pub fn put_or_null<T: Json>(w: &mut Writer, key: &str, value: Option<&T>) {
    w.key(key);
    match value {
        Some(v) => v.write_to(w),
        None => {
            w.null();
        }
    }
}

/// Writes `"key": [values]` when there are any.
#[inline(always)]
pub fn put_list<T: Json>(w: &mut Writer, key: &str, values: &[T]) {
    if !values.is_empty() {
        w.key(key).begin_array();
        for v in values {
            v.write_to(w);
        }
        w.end_array();
    }
}

/// Writes a request's `model`: `given` in place of its own, when given.
#[inline(always)]
pub fn put_model(w: &mut Writer, given: Option<&str>, own: Option<&Str<'_>>) {
    match given {
        Some(m) => {
            w.key("model").str(m);
        }
        None => put(w, "model", own),
    }
}

/// One step of a field's path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(Cow<'static, str>),
    Index(usize),
}

/// A path into a document, built only when it is reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path(Vec<Seg>);

impl Path {
    fn push_front(&mut self, seg: Seg) {
        self.0.insert(0, seg);
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A value that breaks a rule of its API: the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub path: Path,
    pub rule: Cow<'static, str>,
}

impl Invalid {
    pub fn new(rule: impl Into<Cow<'static, str>>) -> Self {
        Self {
            path: Path::default(),
            rule: rule.into(),
        }
    }

    /// The same rule, one key further out.
    pub fn key(mut self, key: &'static str) -> Self {
        self.path.push_front(Seg::Key(Cow::Borrowed(key)));
        self
    }

    /// The same rule, one list item further out.
    pub fn index(mut self, i: usize) -> Self {
        self.path.push_front(Seg::Index(i));
        self
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.0.is_empty() {
            f.write_str(&self.rule)
        } else {
            write!(f, "{}: {}", self.path, self.rule)
        }
    }
}

impl From<Bad> for Invalid {
    fn from(bad: Bad) -> Self {
        Invalid::new(format!("{bad}"))
    }
}

/// A field read that has no counterpart in the other API family: its path
/// and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    pub field: String,
    pub why: &'static str,
}

/// The fields of a document with no counterpart, in the order read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unsupported(pub Vec<Unmapped>);

impl Unsupported {
    /// Notes `field` (under `at`, a path already displayed) as having no
    /// counterpart.
    pub fn note(&mut self, at: impl fmt::Display, field: &[u8], why: &'static str) {
        let field = String::from_utf8_lossy(field);
        let at = at.to_string();
        self.0.push(Unmapped {
            field: if at.is_empty() {
                field.into_owned()
            } else {
                format!("{at}.{field}")
            },
            why,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reads an object, calling `each` with every key (its value next).
pub fn object<'a>(
    r: &mut Reader<'a>,
    mut each: impl FnMut(&mut Reader<'a>, &'a [u8]) -> Result<(), Invalid>,
) -> Result<(), Invalid> {
    if r.peek() != Some(b'{') {
        return Err(Invalid::new("must be an object"));
    }
    r.open(b'{')?;
    let mut first = true;
    while let Some(key) = r.key(&mut first)? {
        each(r, key)?;
    }
    Ok(())
}

/// Reads a list, calling `each` with every item's index (the item next);
/// errors name the item.
pub fn list<'a>(
    r: &mut Reader<'a>,
    mut each: impl FnMut(&mut Reader<'a>, usize) -> Result<(), Invalid>,
) -> Result<(), Invalid> {
    if r.peek() != Some(b'[') {
        return Err(Invalid::new("must be a list"));
    }
    r.open(b'[')?;
    let mut first = true;
    let mut i = 0;
    while r.item(&mut first)? {
        each(r, i).map_err(|e| e.index(i))?;
        i += 1;
    }
    Ok(())
}

/// True (and consumed) when the next value is `null`.
pub fn null(r: &mut Reader<'_>) -> Result<bool, Invalid> {
    Ok(r.null()?)
}

/// A string.
pub fn string<'a>(r: &mut Reader<'a>) -> Result<Str<'a>, Invalid> {
    if r.peek() != Some(b'"') {
        return Err(Invalid::new("must be a string"));
    }
    Ok(Str::borrowed(r.str()?))
}

/// A string, or nothing for `null`.
pub fn opt_string<'a>(r: &mut Reader<'a>) -> Result<Option<Str<'a>>, Invalid> {
    if null(r)? {
        return Ok(None);
    }
    string(r).map(Some)
}

/// A non-negative integer, or nothing for `null`.
pub fn count(r: &mut Reader<'_>) -> Result<Option<u64>, Invalid> {
    if null(r)? {
        return Ok(None);
    }
    if !matches!(r.peek(), Some(b'-' | b'0'..=b'9')) {
        return Err(Invalid::new("must be a whole number"));
    }
    match r.number()? {
        Some(n) => Ok(Some(n)),
        None => Err(Invalid::new("must be a whole number of at least 0")),
    }
}

/// A number as written, or nothing for `null`.
pub fn number<'a>(r: &mut Reader<'a>) -> Result<Option<Raw<'a>>, Invalid> {
    if null(r)? {
        return Ok(None);
    }
    if !matches!(r.peek(), Some(b'-' | b'0'..=b'9')) {
        return Err(Invalid::new("must be a number"));
    }
    Ok(Some(Raw(Cow::Borrowed(r.raw()?))))
}

/// `true` or `false`, or nothing for `null`.
pub fn boolean(r: &mut Reader<'_>) -> Result<Option<bool>, Invalid> {
    match r.peek() {
        Some(b'n') if r.null()? => Ok(None),
        Some(b't' | b'f') => {
            let raw = r.raw()?;
            Ok(Some(raw == b"true"))
        }
        _ => Err(Invalid::new("must be true or false")),
    }
}

/// Any value, as written.
pub fn raw<'a>(r: &mut Reader<'a>) -> Result<Raw<'a>, Invalid> {
    Ok(Raw(Cow::Borrowed(r.raw()?)))
}

/// An object, as written.
pub fn raw_object<'a>(r: &mut Reader<'a>) -> Result<Raw<'a>, Invalid> {
    if r.peek() != Some(b'{') {
        return Err(Invalid::new("must be an object"));
    }
    raw(r)
}

/// The value of a number as written, when it is one.
pub fn value(n: &Raw<'_>) -> Option<f64> {
    std::str::from_utf8(n.bytes()).ok()?.parse().ok()
}

/// Reads a whole document with `read`, checking that nothing follows it.
pub fn document<'a, T>(
    body: &'a [u8],
    read: impl FnOnce(&mut Reader<'a>) -> Result<T, Invalid>,
) -> Result<T, Invalid> {
    let mut r = Reader::new(body);
    let value = read(&mut r)?;
    r.done()?;
    Ok(value)
}

/// Skips a value the reader does not use, noting it as having no
/// counterpart unless it is `null` (or a value that means the default).
pub fn unmapped(
    r: &mut Reader<'_>,
    unsupported: &mut Unsupported,
    at: impl fmt::Display,
    key: &[u8],
    why: &'static str,
) -> Result<(), Invalid> {
    if !null(r)? {
        r.skip()?;
        unsupported.note(at, key, why);
    }
    Ok(())
}

/// The text of a key, for messages.
pub fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors name the path to the field and the rule.
    #[test]
    fn invalid_names_the_path() {
        let e = Invalid::new("must be a string")
            .key("url")
            .key("image_url")
            .index(0)
            .key("content")
            .index(2)
            .key("messages");
        assert_eq!(
            e.to_string(),
            "messages[2].content[0].image_url.url: must be a string"
        );
        assert_eq!(Invalid::new("x").to_string(), "x");
    }

    /// Values read with their rules; null reads as nothing.
    #[test]
    fn reads_values() {
        let doc = br#"{"s":"a\"b","n":null,"c":7,"f":1.5,"b":true,"o":{"x":[1]}}"#;
        document(doc, |r| {
            object(r, |r, key| {
                match key {
                    b"s" => assert_eq!(string(r)?.text().unwrap(), "a\"b"),
                    b"n" => assert_eq!(opt_string(r)?, None),
                    b"c" => assert_eq!(count(r)?, Some(7)),
                    b"f" => assert_eq!(value(&number(r)?.unwrap()), Some(1.5)),
                    b"b" => assert_eq!(boolean(r)?, Some(true)),
                    b"o" => assert_eq!(raw_object(r)?.bytes(), br#"{"x":[1]}"#),
                    _ => unreachable!(),
                }
                Ok(())
            })
        })
        .unwrap();
        let e = document(br#"{"c": -1}"#, |r| object(r, |r, _| count(r).map(|_| ())));
        assert!(e.unwrap_err().rule.contains("at least 0"));
        let e = document(br#"[1, "x"]"#, |r| list(r, |r, _| count(r).map(|_| ())));
        assert_eq!(e.unwrap_err().to_string(), "[1]: must be a whole number");
    }
}
