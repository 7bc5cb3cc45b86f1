//! Tokens of the FHIRPath grammar (FHIRPath N1 `grammar.html`), including the ones the
//! subset does not evaluate, so that the parser can name an unsupported operator instead of
//! reporting a confusing syntax error.

use super::ParseError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Token {
    /// An identifier, plain or `` `delimited` ``; keywords (`and`, `is`, `true`) included.
    Ident(String),
    /// A `'string'` literal, escapes resolved.
    Str(String),
    Integer(i64),
    /// A decimal literal, kept as written (`5.40`).
    Decimal(String),
    /// `%name` or `%'name'`.
    Env(String),
    /// `$this`, `$index`, `$total`.
    Special(String),
    /// Punctuation and symbolic operators: `. ( ) [ ] { } , | = != < > <= >= ~ !~ + - * / &`.
    Sym(&'static str),
}

/// A token and the byte offset where it starts, for error messages.
pub(crate) type Spanned = (Token, usize);

const SYMBOLS: [&str; 21] = [
    "!=", "!~", "<=", ">=", ".", "(", ")", "[", "]", "{", "}", ",", "|", "=", "<", ">", "~", "+",
    "-", "*", "/",
];

/// Splits `text` into tokens. Comments (`//`, `/* */`) are skipped.
pub(crate) fn tokenize(text: &str) -> Result<Vec<Spanned>, ParseError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if text[i..].starts_with("//") {
            i = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
        } else if text[i..].starts_with("/*") {
            let end = text[i + 2..]
                .find("*/")
                .ok_or_else(|| ParseError::new(start, "unterminated comment"))?;
            i += end + 4;
        } else if c == b'\'' {
            let (s, next) = quoted(text, i, b'\'')?;
            out.push((Token::Str(s), start));
            i = next;
        } else if c == b'`' {
            let (s, next) = quoted(text, i, b'`')?;
            out.push((Token::Ident(s), start));
            i = next;
        } else if c == b'%' || c == b'$' {
            let (name, next) = if bytes.get(i + 1) == Some(&b'\'') {
                quoted(text, i + 1, b'\'')?
            } else {
                let end = ident_end(bytes, i + 1);
                if end == i + 1 {
                    return Err(ParseError::new(start, "expected a name after '%' or '$'"));
                }
                (text[i + 1..end].to_owned(), end)
            };
            out.push((
                if c == b'%' {
                    Token::Env(name)
                } else {
                    Token::Special(name)
                },
                start,
            ));
            i = next;
        } else if c.is_ascii_digit() {
            let (token, next) = number(text, i)?;
            out.push((token, start));
            i = next;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let end = ident_end(bytes, i);
            out.push((Token::Ident(text[i..end].to_owned()), start));
            i = end;
        } else if c == b'&' {
            out.push((Token::Sym("&"), start));
            i += 1;
        } else if let Some(sym) = SYMBOLS.iter().find(|s| text[i..].starts_with(**s)) {
            out.push((Token::Sym(sym), start));
            i += sym.len();
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            return Err(ParseError::new(
                start,
                format!("unexpected character {ch:?}"),
            ));
        }
    }
    Ok(out)
}

fn ident_end(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
        i += 1;
    }
    i
}

/// An integer, or a decimal when a `.` is followed by a digit (`1.5`; but `1.exists()` is an
/// integer followed by a function call).
fn number(text: &str, start: usize) -> Result<(Token, usize), ParseError> {
    let bytes = text.as_bytes();
    let mut i = start;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    if bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        return Ok((Token::Decimal(text[start..i].to_owned()), i));
    }
    let value = text[start..i]
        .parse()
        .map_err(|_| ParseError::new(start, "integer literal out of range"))?;
    Ok((Token::Integer(value), i))
}

/// A `'...'` or `` `...` `` literal starting at `start`; returns its text and the next offset.
fn quoted(text: &str, start: usize, quote: u8) -> Result<(String, usize), ParseError> {
    let mut out = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((offset, c)) = chars.next() {
        match c {
            c if c == char::from(quote) => return Ok((out, start + 1 + offset + 1)),
            '\\' => {
                let (_, esc) = chars
                    .next()
                    .ok_or_else(|| ParseError::new(start, "unterminated literal"))?;
                match esc {
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'f' => out.push('\u{c}'),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).map(|(_, h)| h).collect();
                        let ch = u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| hex.len() == 4)
                            .and_then(char::from_u32)
                            .ok_or_else(|| ParseError::new(start, "invalid \\u escape"))?;
                        out.push(ch);
                    }
                    '\'' | '"' | '`' | '\\' | '/' => out.push(esc),
                    _ => return Err(ParseError::new(start, "invalid escape in literal")),
                }
            }
            c => out.push(c),
        }
    }
    Err(ParseError::new(start, "unterminated literal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<Token> {
        tokenize(text)
            .unwrap()
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    #[test]
    fn tokens_of_a_typical_expression() {
        assert_eq!(
            kinds("Patient.telecom.where(system='email') | %resource.x[0] != 1.50"),
            [
                Token::Ident("Patient".into()),
                Token::Sym("."),
                Token::Ident("telecom".into()),
                Token::Sym("."),
                Token::Ident("where".into()),
                Token::Sym("("),
                Token::Ident("system".into()),
                Token::Sym("="),
                Token::Str("email".into()),
                Token::Sym(")"),
                Token::Sym("|"),
                Token::Env("resource".into()),
                Token::Sym("."),
                Token::Ident("x".into()),
                Token::Sym("["),
                Token::Integer(0),
                Token::Sym("]"),
                Token::Sym("!="),
                Token::Decimal("1.50".into()),
            ]
        );
    }

    #[test]
    fn literals_escapes_and_comments() {
        assert_eq!(
            kinds(r"'a\'b\u00e9' `div` // note"),
            [Token::Str("a'bé".into()), Token::Ident("div".into())]
        );
        assert_eq!(
            kinds("1.exists() /* c */"),
            [
                Token::Integer(1),
                Token::Sym("."),
                Token::Ident("exists".into()),
                Token::Sym("("),
                Token::Sym(")")
            ]
        );
        assert!(tokenize("'open").is_err());
        assert!(tokenize("a # b").is_err());
        assert!(tokenize("99999999999999999999").is_err());
        assert!(tokenize(r"'\u12'").is_err());
        assert!(tokenize("/* open").is_err());
        assert!(tokenize("% x").is_err());
    }
}
