//! The AST of the supported subset and a precedence-climbing parser for it.
//!
//! Operator precedence follows FHIRPath N1 (`fhirpath.html#operator-precedence`), tightest
//! first: `.`/`[]`, unary, `* / div mod`, `+ - &`, `is as`, `|`, `< > <= >=`, `= ~ != !~`,
//! `in contains`, `and`, `xor or`, `implies`. Every level is parsed, so an operator outside the
//! subset is reported by name ("unsupported operator '<'") rather than as a syntax error.

use std::fmt;

use super::ParseError;
use super::lexer::{Spanned, Token, tokenize};
use super::types::{ElementName, TypeName};

/// ASTs taller than this are refused, so that hostile input cannot overflow the stack of the
/// parser, the evaluator or `Drop` (all recursive). The tallest R4 expression is 38 levels.
const MAX_HEIGHT: usize = 200;

/// One node of a parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// `{}`: the empty collection.
    Empty,
    Literal(Literal),
    /// `$this`: the focus.
    This,
    /// `%resource` (also `%rootResource`, `%context`): the resource being evaluated.
    Resource,
    /// A type name at the start of a path (`Patient` in `Patient.name`): the focus, if it is
    /// of that type.
    TypeFilter(TypeName),
    /// An element name applied to the focus (`name` in `name | alias`, `code` in a composite
    /// component).
    Name(ElementName),
    /// `base.name`.
    Child(Box<Node>, ElementName),
    /// `base[index]`.
    Index(Box<Node>, Box<Node>),
    /// `base.f(...)`, or `f(...)` on the focus when `base` is `None`.
    Call(Option<Box<Node>>, Func),
    /// `a | b`.
    Union(Box<Node>, Box<Node>),
    /// `a = b`, or `a != b` when `negated`.
    Equals {
        left: Box<Node>,
        right: Box<Node>,
        negated: bool,
    },
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    /// `a is T`.
    Is(Box<Node>, TypeName),
    /// `a as T`.
    As(Box<Node>, TypeName),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Boolean(bool),
    String(String),
    Integer(i64),
    /// Kept as written; compared numerically.
    Decimal(String),
}

/// The functions of the subset, with their (already parsed) arguments.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Func {
    Where(Box<Node>),
    Exists(Option<Box<Node>>),
    Empty,
    First,
    Last,
    Not,
    HasValue,
    /// `resolve()`: the target type of a reference, as far as the reference text tells.
    Resolve,
    /// `extension('url')`.
    Extension(String),
    OfType(TypeName),
    As(TypeName),
    Is(TypeName),
}

impl Func {
    #[cfg(test)]
    fn label(&self) -> &'static str {
        match self {
            Func::Where(_) => "where()",
            Func::Exists(_) => "exists()",
            Func::Empty => "empty()",
            Func::First => "first()",
            Func::Last => "last()",
            Func::Not => "not()",
            Func::HasValue => "hasValue()",
            Func::Resolve => "resolve()",
            Func::Extension(_) => "extension()",
            Func::OfType(_) => "ofType()",
            Func::As(_) => "as()",
            Func::Is(_) => "is()",
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Func::Where(_) => "where",
            Func::Exists(_) => "exists",
            Func::Empty => "empty",
            Func::First => "first",
            Func::Last => "last",
            Func::Not => "not",
            Func::HasValue => "hasValue",
            Func::Resolve => "resolve",
            Func::Extension(_) => "extension",
            Func::OfType(_) => "ofType",
            Func::As(_) => "as",
            Func::Is(_) => "is",
        }
    }
}

impl Node {
    /// Calls `f` with a label for every construct in the tree: `"step"` for `.name`,
    /// `"type root"`, `"bare name"`, operators by symbol, functions as `"where()"`, literals
    /// by type. Used by the survey of R4 expressions (see the module docs).
    #[cfg(test)]
    pub(crate) fn constructs(&self, f: &mut dyn FnMut(&'static str)) {
        let both = |a: &Node, b: &Node, label: &'static str, f: &mut dyn FnMut(&'static str)| {
            f(label);
            a.constructs(f);
            b.constructs(f);
        };
        match self {
            Node::Empty => f("{}"),
            Node::Literal(Literal::Boolean(_)) => f("boolean literal"),
            Node::Literal(Literal::String(_)) => f("string literal"),
            Node::Literal(Literal::Integer(_)) => f("integer literal"),
            Node::Literal(Literal::Decimal(_)) => f("decimal literal"),
            Node::This => f("$this"),
            Node::Resource => f("%resource"),
            Node::TypeFilter(_) => f("type root"),
            Node::Name(_) => f("bare name"),
            Node::Child(base, _) => {
                f("step");
                base.constructs(f);
            }
            Node::Index(base, index) => both(base, index, "[]", f),
            Node::Call(base, func) => {
                f(func.label());
                if let Some(base) = base {
                    base.constructs(f);
                }
                if let Func::Where(arg) | Func::Exists(Some(arg)) = func {
                    arg.constructs(f);
                }
            }
            Node::Union(a, b) => both(a, b, "|", f),
            Node::Equals {
                left,
                right,
                negated,
            } => both(left, right, if *negated { "!=" } else { "=" }, f),
            Node::And(a, b) => both(a, b, "and", f),
            Node::Or(a, b) => both(a, b, "or", f),
            Node::Is(base, _) => {
                f("is");
                base.constructs(f);
            }
            Node::As(base, _) => {
                f("as");
                base.constructs(f);
            }
        }
    }
}

/// Parses a whole expression.
pub(crate) fn parse(text: &str) -> Result<Node, ParseError> {
    let tokens = tokenize(text)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
        end: text.len(),
    };
    let (node, _) = p.expression(0)?;
    match p.peek() {
        None => Ok(node),
        Some(_) => Err(p.error("unexpected input after the expression")),
    }
}

struct Parser {
    tokens: Vec<Spanned>,
    pos: usize,
    /// Current recursion depth of `expression`, limited like the height.
    depth: usize,
    end: usize,
}

/// Binary operators by precedence (higher binds tighter); `None` for infix keywords and
/// symbols that FHIRPath has but the subset does not evaluate.
fn binary_precedence(token: &Token) -> Option<(u8, &str)> {
    let op = match token {
        Token::Ident(s) => s.as_str(),
        Token::Sym(s) => s,
        _ => return None,
    };
    let prec = match op {
        "implies" => 1,
        "or" | "xor" => 2,
        "and" => 3,
        "in" | "contains" => 4,
        "=" | "~" | "!=" | "!~" => 5,
        "<" | ">" | "<=" | ">=" => 6,
        "|" => 7,
        "is" | "as" => 8,
        "+" | "-" | "&" => 9,
        "*" | "/" | "div" | "mod" => 10,
        _ => return None,
    };
    Some((prec, op))
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(t, _)| t)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).map(|(t, _)| t.clone());
        self.pos += 1;
        t
    }

    fn offset(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(_, at)| *at)
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError::new(self.offset(), message)
    }

    fn expect(&mut self, sym: &'static str) -> Result<(), ParseError> {
        if self.peek() == Some(&Token::Sym(sym)) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(format!("expected '{sym}'")))
        }
    }

    /// The height of a node built on children of height `children`, or an error if too tall.
    fn height(&self, children: usize) -> Result<usize, ParseError> {
        if children >= MAX_HEIGHT {
            return Err(self.error("expression nested too deeply"));
        }
        Ok(children + 1)
    }

    /// Precedence climbing: parses operators binding tighter than `min`. Returns the node
    /// and its height.
    fn expression(&mut self, min: u8) -> Result<(Node, usize), ParseError> {
        self.depth += 1;
        if self.depth > MAX_HEIGHT {
            return Err(self.error("expression nested too deeply"));
        }
        let (mut left, mut height) = self.unary()?;
        while let Some((prec, op)) = self.peek().and_then(binary_precedence) {
            if prec <= min {
                break;
            }
            let op = op.to_owned();
            let at = self.offset();
            self.pos += 1;
            left = match op.as_str() {
                "is" => Node::Is(Box::new(left), self.type_specifier()?),
                "as" => Node::As(Box::new(left), self.type_specifier()?),
                _ => {
                    let (right, right_height) = self.expression(prec)?;
                    height = height.max(right_height);
                    let (left, right) = (Box::new(left), Box::new(right));
                    match op.as_str() {
                        "|" => Node::Union(left, right),
                        "=" | "!=" => Node::Equals {
                            left,
                            right,
                            negated: op == "!=",
                        },
                        "and" => Node::And(left, right),
                        "or" => Node::Or(left, right),
                        _ => {
                            return Err(ParseError::new(
                                at,
                                format!("unsupported operator '{op}'"),
                            ));
                        }
                    }
                }
            };
            height = self.height(height)?;
        }
        self.depth -= 1;
        Ok((left, height))
    }

    fn unary(&mut self) -> Result<(Node, usize), ParseError> {
        if matches!(self.peek(), Some(Token::Sym("+" | "-"))) {
            return Err(self.error("unsupported operator: unary sign"));
        }
        let (mut node, mut height) = self.term()?;
        // Postfix: `.name`, `.f(...)`, `[index]`.
        loop {
            match self.peek() {
                Some(Token::Sym(".")) => {
                    self.pos += 1;
                    let Some(Token::Ident(name)) = self.next() else {
                        self.pos -= 1;
                        return Err(self.error("expected a name after '.'"));
                    };
                    node = if self.peek() == Some(&Token::Sym("(")) {
                        let (func, arg_height) = self.call(&name)?;
                        height = self.height(height.max(arg_height))?;
                        Node::Call(Some(Box::new(node)), func)
                    } else {
                        height = self.height(height)?;
                        Node::Child(Box::new(node), ElementName::new(name))
                    };
                }
                Some(Token::Sym("[")) => {
                    self.pos += 1;
                    let (index, index_height) = self.expression(0)?;
                    height = self.height(height.max(index_height))?;
                    self.expect("]")?;
                    node = Node::Index(Box::new(node), Box::new(index));
                }
                _ => return Ok((node, height)),
            }
        }
    }

    fn term(&mut self) -> Result<(Node, usize), ParseError> {
        let at = self.offset();
        let Some(token) = self.next() else {
            return Err(ParseError::new(at, "unexpected end of expression"));
        };
        let node = match token {
            Token::Str(s) => Node::Literal(Literal::String(s)),
            Token::Integer(i) => Node::Literal(Literal::Integer(i)),
            Token::Decimal(d) => Node::Literal(Literal::Decimal(d)),
            Token::Sym("(") => {
                let inner = self.expression(0)?;
                self.expect(")")?;
                return Ok(inner);
            }
            Token::Sym("{") => {
                self.expect("}")?;
                Node::Empty
            }
            Token::Env(name) => match name.as_str() {
                "resource" | "rootResource" | "context" => Node::Resource,
                _ => return Err(ParseError::new(at, format!("unsupported variable %{name}"))),
            },
            Token::Special(name) if name == "this" => Node::This,
            Token::Special(name) => {
                return Err(ParseError::new(at, format!("unsupported variable ${name}")));
            }
            Token::Ident(name) => match name.as_str() {
                "true" => Node::Literal(Literal::Boolean(true)),
                "false" => Node::Literal(Literal::Boolean(false)),
                _ if self.peek() == Some(&Token::Sym("(")) => {
                    let (func, height) = self.call(&name)?;
                    return Ok((Node::Call(None, func), self.height(height)?));
                }
                // Element names start in lower case; a capital starts a type name (`Patient`),
                // which FHIRPath reads as "the focus, if it is of this type".
                _ if name.starts_with(|c: char| c.is_ascii_uppercase()) => Node::TypeFilter(
                    TypeName::resolve(&name)
                        .ok_or_else(|| ParseError::new(at, format!("unknown type '{name}'")))?,
                ),
                _ => Node::Name(ElementName::new(name)),
            },
            Token::Sym(s) => return Err(ParseError::new(at, format!("unexpected '{s}'"))),
        };
        Ok((node, 1))
    }

    /// A function call; the current token is its `(`. Returns the height of its argument.
    fn call(&mut self, name: &str) -> Result<(Func, usize), ParseError> {
        let at = self.offset();
        self.expect("(")?;
        let mut height = 0;
        let mut argument = |p: &mut Self| {
            p.expression(0).map(|(node, h)| {
                height = h;
                Box::new(node)
            })
        };
        let func = match name {
            "where" => Func::Where(argument(self)?),
            "exists" if self.peek() == Some(&Token::Sym(")")) => Func::Exists(None),
            "exists" => Func::Exists(Some(argument(self)?)),
            "empty" => Func::Empty,
            "first" => Func::First,
            "last" => Func::Last,
            "not" => Func::Not,
            "hasValue" => Func::HasValue,
            "resolve" => Func::Resolve,
            "extension" => match self.next() {
                Some(Token::Str(url)) => Func::Extension(url),
                _ => return Err(ParseError::new(at, "extension() takes a string literal")),
            },
            "ofType" => Func::OfType(self.type_specifier()?),
            "as" => Func::As(self.type_specifier()?),
            "is" => Func::Is(self.type_specifier()?),
            _ => {
                return Err(ParseError::new(
                    at,
                    format!("unsupported function {name}()"),
                ));
            }
        };
        self.expect(")")
            .map_err(|_| ParseError::new(at, format!("wrong arguments to {name}()")))?;
        Ok((func, height))
    }

    /// A type name, optionally qualified: `Quantity`, `FHIR.Quantity`, `System.String`.
    fn type_specifier(&mut self) -> Result<TypeName, ParseError> {
        let at = self.offset();
        let Some(Token::Ident(mut name)) = self.next() else {
            return Err(ParseError::new(at, "expected a type name"));
        };
        if matches!(name.as_str(), "FHIR" | "System") && self.peek() == Some(&Token::Sym(".")) {
            self.pos += 1;
            match self.next() {
                Some(Token::Ident(n)) => name = n,
                _ => return Err(ParseError::new(at, "expected a type name")),
            }
        }
        TypeName::resolve(&name)
            .ok_or_else(|| ParseError::new(at, format!("unknown type '{name}'")))
    }
}

/// A name as FHIRPath text: plain when it lexes back as this one identifier, else delimited
/// with backticks (`` `a b` ``, a keyword such as `` `and` ``, non-ASCII letters).
fn write_name(f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
    const KEYWORDS: &[&str] = &[
        "and", "or", "xor", "implies", "is", "as", "div", "mod", "in", "contains", "true", "false",
    ];
    let plain = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !KEYWORDS.contains(&name);
    if plain {
        f.write_str(name)
    } else {
        f.write_str("`")?;
        write_escaped(f, name, '`')?;
        f.write_str("`")
    }
}

/// The inside of a quoted literal, escaped so the lexer reads back exactly `text`.
fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str, quote: char) -> fmt::Result {
    for c in text.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            '\u{c}' => f.write_str("\\f")?,
            c if c == quote => write!(f, "\\{c}")?,
            c => write!(f, "{c}")?,
        }
    }
    Ok(())
}

/// A string literal as FHIRPath text.
fn write_string(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_str("'")?;
    write_escaped(f, text, '\'')?;
    f.write_str("'")
}

/// Formats the AST back to FHIRPath (fully parenthesised binary operators), for messages and
/// for the per-type sub-expressions search derives from a union. What it writes parses back to
/// the same tree (a property test checks this on random text).
impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Empty => f.write_str("{}"),
            Node::Literal(Literal::Boolean(b)) => write!(f, "{b}"),
            Node::Literal(Literal::String(s)) => write_string(f, s),
            Node::Literal(Literal::Integer(i)) => write!(f, "{i}"),
            Node::Literal(Literal::Decimal(d)) => f.write_str(d),
            Node::This => f.write_str("$this"),
            Node::Resource => f.write_str("%resource"),
            Node::TypeFilter(t) => f.write_str(t.as_str()),
            Node::Name(n) => write_name(f, &n.text),
            Node::Child(base, n) => {
                write!(f, "{base}.")?;
                write_name(f, &n.text)
            }
            Node::Index(base, i) => write!(f, "{base}[{i}]"),
            Node::Call(base, func) => {
                if let Some(base) = base {
                    write!(f, "{base}.")?;
                }
                write!(f, "{}(", func.name())?;
                match func {
                    Func::Where(arg) | Func::Exists(Some(arg)) => write!(f, "{arg}")?,
                    Func::Extension(url) => write_string(f, url)?,
                    Func::OfType(t) | Func::As(t) | Func::Is(t) => f.write_str(t.as_str())?,
                    _ => {}
                }
                f.write_str(")")
            }
            Node::Union(a, b) => write!(f, "{a} | {b}"),
            Node::Equals {
                left,
                right,
                negated,
            } => write!(f, "({left} {} {right})", if *negated { "!=" } else { "=" }),
            Node::And(a, b) => write!(f, "({a} and {b})"),
            Node::Or(a, b) => write!(f, "({a} or {b})"),
            Node::Is(a, t) => write!(f, "({a} is {})", t.as_str()),
            Node::As(a, t) => write!(f, "({a} as {})", t.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> String {
        parse(text).unwrap().to_string()
    }

    #[test]
    fn display_delimits_names_and_escapes_strings_so_they_parse_back() {
        for text in [
            "`ઐ`",
            "a.`ઐ b`",
            "`and`.x",
            "`a\\`b`",
            "'a\\\\b'",
            "'it\\'s'",
            "'line\\nbreak'",
            "x.extension('http://e/\\'q')",
        ] {
            let first = parse(text).unwrap();
            let shown = first.to_string();
            let again = parse(&shown).unwrap_or_else(|e| panic!("{text} -> {shown}: {e:?}"));
            assert_eq!(again, first, "{text} -> {shown}");
        }
        assert_eq!(round_trip("`ઐ`"), "`ઐ`");
        assert_eq!(round_trip("Patient.name"), "Patient.name");
    }

    #[test]
    fn precedence_follows_fhirpath() {
        assert_eq!(
            round_trip("Patient.deceased.exists() and Patient.deceased != false"),
            "(Patient.deceased.exists() and (Patient.deceased != false))"
        );
        assert_eq!(
            round_trip("Observation.value as Quantity | Observation.value as SampledData"),
            "(Observation.value as Quantity) | (Observation.value as SampledData)"
        );
        assert_eq!(
            round_trip("a = 'x' or b = 'y' and c"),
            "((a = 'x') or ((b = 'y') and c))"
        );
        assert_eq!(
            round_trip("Bundle.entry[0].resource"),
            "Bundle.entry[0].resource"
        );
        assert_eq!(
            round_trip("x.where(resolve() is Patient)"),
            "x.where((resolve() is Patient))"
        );
        assert_eq!(
            round_trip("value.as(System.DateTime) | %resource.a.ofType(FHIR.Quantity)"),
            "value.as(dateTime) | %resource.a.ofType(Quantity)"
        );
    }

    #[test]
    fn unsupported_constructs_are_named() {
        let cases = [
            ("a < 1", "unsupported operator '<'"),
            ("a.count()", "unsupported function count()"),
            ("a contains 'x'", "unsupported operator 'contains'"),
            ("%ucum", "unsupported variable %ucum"),
            ("$index", "unsupported variable $index"),
            ("-1", "unsupported operator: unary sign"),
            ("Patient.value as Nope", "unknown type 'Nope'"),
            ("Nope.x", "unknown type 'Nope'"),
            ("a.where()", "unexpected ')'"),
            ("a.first(1)", "wrong arguments to first()"),
            ("a.extension(1)", "extension() takes a string literal"),
            ("a b", "unexpected input after the expression"),
            ("a.", "expected a name after '.'"),
            ("(a", "expected ')'"),
            ("", "unexpected end of expression"),
        ];
        for (text, message) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.message, message, "{text}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(
            parse(&deep).unwrap_err().message,
            "expression nested too deeply"
        );
        let chain = "a.where(".repeat(5_000);
        assert!(parse(&chain).is_err());
    }
}
