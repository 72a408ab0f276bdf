//! The EOF-style `qualifier` language of the `cr*Page` queries.
//!
//! Supported: comparisons `= != <> < <= > >=` (and `like` / `caseInsensitiveLike` with `*` and `?`
//! wildcards) between a key path and a literal; string literals in single or double quotes, numbers,
//! `nil`, `(NSCalendarDate) 'yyyy-MM-dd HH:mm:ss[ +zzzz]'`; `AND`, `OR`, `NOT` and parentheses.
//! Key paths are the entity's fields, `_id`, and relations (`toCompany` or `toCompany._id`, comparing
//! the related id). Anything else is a [`QualifierError`], which the GraphQL layer reports as an error.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::dates;
use crate::model::{Entity, FieldKind, Record};
use crate::readings::{IdOrder, Readings};

/// A qualifier that could not be parsed or does not fit the entity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid qualifier: {0}")]
pub struct QualifierError(pub String);

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `like` (case-sensitive wildcard match)
    Like,
    /// `caseInsensitiveLike`
    ILike,
}

/// A literal on the right-hand side.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A quoted string.
    Str(String),
    /// A number.
    Num(f64),
    /// `(NSCalendarDate) '...'`, resolved to an instant.
    Date(DateTime<Utc>),
    /// `nil`
    Nil,
}

/// A parsed qualifier.
#[derive(Debug, Clone, PartialEq)]
pub enum Qualifier {
    /// `path op literal`
    Cmp(String, Op, Literal),
    /// `a AND b`
    And(Box<Qualifier>, Box<Qualifier>),
    /// `a OR b`
    Or(Box<Qualifier>, Box<Qualifier>),
    /// `NOT a`
    Not(Box<Qualifier>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Op(Op),
    LParen,
    RParen,
    Cast(String),
}

fn err<T>(msg: impl Into<String>) -> Result<T, QualifierError> {
    Err(QualifierError(msg.into()))
}

fn lex(s: &str) -> Result<Vec<Tok>, QualifierError> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            // a cast like (NSCalendarDate)?
            let rest: String = chars[i + 1..].iter().collect();
            let word: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            let after = rest[word.len()..].trim_start();
            if !word.is_empty()
                && word.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && after.starts_with(')')
            {
                let consumed = rest.len() - after.len() + 1;
                out.push(Tok::Cast(word));
                i += 1 + rest[..consumed].chars().count();
            } else {
                out.push(Tok::LParen);
                i += 1;
            }
        } else if c == ')' {
            out.push(Tok::RParen);
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut j = i + 1;
            let mut v = String::new();
            while j < chars.len() && chars[j] != c {
                if chars[j] == '\\' && j + 1 < chars.len() {
                    j += 1;
                }
                v.push(chars[j]);
                j += 1;
            }
            if j >= chars.len() {
                return err("unterminated string literal");
            }
            out.push(Tok::Str(v));
            i = j + 1;
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            let mut j = i + 1;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                j += 1;
            }
            let t: String = chars[i..j].iter().collect();
            out.push(Tok::Num(t.parse().map_err(|_| QualifierError(format!("bad number {t}")))?));
            i = j;
        } else if "=!<>".contains(c) {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let (op, n) = match two.as_str() {
                "!=" | "<>" => (Op::Ne, 2),
                "<=" => (Op::Le, 2),
                ">=" => (Op::Ge, 2),
                "==" => (Op::Eq, 2),
                _ => match c {
                    '=' => (Op::Eq, 1),
                    '<' => (Op::Lt, 1),
                    '>' => (Op::Gt, 1),
                    _ => return err(format!("unexpected character '{c}'")),
                },
            };
            out.push(Tok::Op(op));
            i += n;
        } else if c.is_alphabetic() || c == '_' {
            let mut j = i + 1;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '.') {
                j += 1;
            }
            let w: String = chars[i..j].iter().collect();
            match w.to_lowercase().as_str() {
                "like" => out.push(Tok::Op(Op::Like)),
                "caseinsensitivelike" => out.push(Tok::Op(Op::ILike)),
                _ => out.push(Tok::Ident(w)),
            }
            i = j;
        } else {
            return err(format!("unexpected character '{c}'"));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    entity: Entity,
    _src: &'a str,
}

impl Parser<'_> {
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Ident(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn or(&mut self) -> Result<Qualifier, QualifierError> {
        let mut left = self.and()?;
        while self.peek_kw("or") {
            self.pos += 1;
            left = Qualifier::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Qualifier, QualifierError> {
        let mut left = self.atom()?;
        while self.peek_kw("and") {
            self.pos += 1;
            left = Qualifier::And(Box::new(left), Box::new(self.atom()?));
        }
        Ok(left)
    }

    fn atom(&mut self) -> Result<Qualifier, QualifierError> {
        if self.peek_kw("not") {
            self.pos += 1;
            return Ok(Qualifier::Not(Box::new(self.atom()?)));
        }
        match self.toks.get(self.pos).cloned() {
            Some(Tok::LParen) => {
                self.pos += 1;
                let q = self.or()?;
                if self.toks.get(self.pos) != Some(&Tok::RParen) {
                    return err("missing ')'");
                }
                self.pos += 1;
                Ok(q)
            }
            Some(Tok::Ident(path)) => {
                self.pos += 1;
                self.check_path(&path)?;
                let Some(Tok::Op(op)) = self.toks.get(self.pos).cloned() else {
                    return err(format!("expected an operator after '{path}'"));
                };
                self.pos += 1;
                let lit = self.literal()?;
                Ok(Qualifier::Cmp(path, op, lit))
            }
            Some(t) => err(format!("unexpected token {t:?}")),
            None => err("unexpected end of qualifier"),
        }
    }

    fn literal(&mut self) -> Result<Literal, QualifierError> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        match t {
            Some(Tok::Str(s)) => Ok(Literal::Str(s)),
            Some(Tok::Num(n)) => Ok(Literal::Num(n)),
            Some(Tok::Ident(w)) if w.eq_ignore_ascii_case("nil") || w.eq_ignore_ascii_case("null") => {
                Ok(Literal::Nil)
            }
            Some(Tok::Cast(c)) if c == "NSCalendarDate" || c == "NSTimestamp" => {
                match self.toks.get(self.pos).cloned() {
                    Some(Tok::Str(s)) => {
                        self.pos += 1;
                        dates::parse(&s)
                            .map(Literal::Date)
                            .ok_or_else(|| QualifierError(format!("bad date '{s}'")))
                    }
                    _ => err("expected a date string after (NSCalendarDate)"),
                }
            }
            Some(Tok::Cast(c)) => err(format!("unsupported cast ({c})")),
            Some(t) => err(format!("expected a literal, found {t:?}")),
            None => err("expected a literal at end of qualifier"),
        }
    }

    fn check_path(&self, path: &str) -> Result<(), QualifierError> {
        let mut parts = path.splitn(2, '.');
        let head = parts.next().unwrap_or_default();
        let tail = parts.next();
        match (self.entity.field_kind(head), tail) {
            (Some(FieldKind::Rel(_)), None | Some("_id")) => Ok(()),
            (Some(_), None) => Ok(()),
            _ => err(format!("unknown key path '{path}' for {}", self.entity.type_name())),
        }
    }
}

/// Parses a qualifier for an entity.
pub fn parse(src: &str, entity: Entity) -> Result<Qualifier, QualifierError> {
    let toks = lex(src)?;
    if toks.is_empty() {
        return err("empty qualifier");
    }
    let mut p = Parser { toks, pos: 0, entity, _src: src };
    let q = p.or()?;
    if p.pos != p.toks.len() {
        return err(format!("unexpected trailing input at token {}", p.pos + 1));
    }
    Ok(q)
}

/// A field value as seen by a comparison.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Nil,
    Num(f64),
    Str(String),
    Time(DateTime<Utc>),
}

/// A record date as a comparison sees it: whole seconds (what Carerix serves), or its Amsterdam
/// wall-clock text under [`Readings::wall_clock_order`].
fn date_value(t: DateTime<Utc>, readings: &Readings) -> Val {
    if readings.wall_clock_order {
        Val::Str(dates::format(t))
    } else {
        Val::Time(DateTime::<Utc>::from_timestamp(t.timestamp(), 0).unwrap_or(t))
    }
}

fn field_value(r: &Record, path: &str, readings: &Readings) -> Val {
    let head = path.split('.').next().unwrap_or_default();
    match head {
        "_id" => match readings.id_order {
            IdOrder::Numeric => Val::Num(r.id as f64),
            IdOrder::Text => Val::Str(r.id.to_string()),
        },
        "_kind" => Val::Str(r.entity.type_name().into()),
        "creationDate" => date_value(r.creation, readings),
        "modificationDate" => r.modification_date().map_or(Val::Nil, |t| date_value(t, readings)),
        "deleted" => Val::Num(if r.deleted { 1.0 } else { 0.0 }),
        _ => match (r.entity.field_kind(head), r.fields.get(head)) {
            (_, None | Some(Value::Null)) => Val::Nil,
            (Some(FieldKind::Rel(_)), Some(v)) => match v["_id"].as_str().and_then(|s| s.parse().ok()) {
                Some(n) => Val::Num(n),
                None => Val::Nil,
            },
            (Some(FieldKind::Date), Some(Value::String(s))) => {
                dates::parse(s).map_or(Val::Str(s.clone()), Val::Time)
            }
            (_, Some(Value::Number(n))) => Val::Num(n.as_f64().unwrap_or_default()),
            (_, Some(Value::String(s))) => Val::Str(s.clone()),
            (_, Some(v)) => Val::Str(v.to_string()),
        },
    }
}

fn wildcard(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn compare(v: &Val, op: Op, lit: &Literal) -> bool {
    if matches!(lit, Literal::Nil) {
        return match op {
            Op::Eq => *v == Val::Nil,
            Op::Ne => *v != Val::Nil,
            _ => false,
        };
    }
    if *v == Val::Nil {
        return op == Op::Ne;
    }
    if let (Op::Like | Op::ILike, Literal::Str(p)) = (op, lit) {
        let s = match v {
            Val::Str(s) => s.clone(),
            Val::Num(n) => n.to_string(),
            Val::Time(t) => dates::format(*t),
            Val::Nil => return false,
        };
        return if op == Op::ILike {
            wildcard(&p.to_lowercase(), &s.to_lowercase())
        } else {
            wildcard(p, &s)
        };
    }
    let ord: Option<Ordering> = match (v, lit) {
        (Val::Time(a), Literal::Date(b)) => Some(a.cmp(b)),
        (Val::Time(a), Literal::Str(s)) => dates::parse(s).map(|b| a.cmp(&b)),
        (Val::Num(a), Literal::Num(b)) => a.partial_cmp(b),
        (Val::Num(a), Literal::Str(s)) => s.trim().parse::<f64>().ok().and_then(|b| a.partial_cmp(&b)),
        (Val::Str(a), Literal::Str(b)) => Some(a.as_str().cmp(b.as_str())),
        (Val::Str(a), Literal::Num(b)) => Some(a.as_str().cmp(b.to_string().as_str())),
        (Val::Str(a), Literal::Date(b)) => Some(a.as_str().cmp(dates::format(*b).as_str())),
        _ => None,
    };
    let Some(ord) = ord else { return op == Op::Ne };
    match op {
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Lt => ord == Ordering::Less,
        Op::Le => ord != Ordering::Greater,
        Op::Gt => ord == Ordering::Greater,
        Op::Ge => ord != Ordering::Less,
        Op::Like | Op::ILike => false,
    }
}

impl Qualifier {
    /// Whether a record satisfies the qualifier (default readings).
    pub fn matches(&self, r: &Record) -> bool {
        self.matches_with(r, &Readings::default())
    }

    /// Whether a record satisfies the qualifier under `readings`.
    pub fn matches_with(&self, r: &Record, readings: &Readings) -> bool {
        match self {
            Qualifier::Cmp(path, op, lit) => compare(&field_value(r, path, readings), *op, lit),
            Qualifier::And(a, b) => a.matches_with(r, readings) && b.matches_with(r, readings),
            Qualifier::Or(a, b) => a.matches_with(r, readings) || b.matches_with(r, readings),
            Qualifier::Not(a) => !a.matches_with(r, readings),
        }
    }

    /// Whether a key path starting with `head` (e.g. `_id`) appears anywhere in the qualifier.
    pub fn mentions(&self, head: &str) -> bool {
        match self {
            Qualifier::Cmp(path, _, _) => path.split('.').next() == Some(head),
            Qualifier::And(a, b) | Qualifier::Or(a, b) => a.mentions(head) || b.mentions(head),
            Qualifier::Not(a) => a.mentions(head),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    fn rec(id: u64, modification: &str) -> Record {
        let mut fields = Map::new();
        fields.insert("firstName".into(), json!("Daan"));
        fields.insert("lastName".into(), json!("de Vries"));
        fields.insert("visitCity".into(), Value::Null);
        Record {
            id,
            entity: Entity::Employee,
            deleted: false,
            creation: dates::parse("2025-01-01 00:00:00").expect("date"),
            modification: dates::parse(modification).expect("date"),
            fields,
        }
    }

    fn m(q: &str, r: &Record) -> bool {
        parse(q, Entity::Employee).expect("parses").matches(r)
    }

    #[test]
    fn comparisons_on_ids_strings_and_nil_work() {
        let r = rec(42, "2025-06-01 12:00:00");
        assert!(m("_id = 42", &r));
        assert!(m("_id = '42'", &r));
        assert!(m("_id > 41 AND _id <= 42", &r));
        assert!(m("firstName = 'Daan' AND lastName != \"Bakker\"", &r));
        assert!(m("visitCity = nil", &r));
        assert!(!m("firstName = nil", &r));
        assert!(m("(firstName = 'X' OR lastName = 'de Vries') AND deleted = 0", &r));
        assert!(m("firstName like 'Da*'", &r));
    }

    #[test]
    fn dates_compare_as_instants_across_the_dst_change() {
        // second pass of the repeated hour (+0100) is after the first pass (+0200)
        let second = rec(1, "2025-10-26 02:30:00 +0100");
        assert!(m("modificationDate >= (NSCalendarDate) '2025-10-26 02:30:00'", &second));
        assert!(m("modificationDate > (NSCalendarDate) '2025-10-26 02:45:00 +0200'", &second));
        assert!(!m("modificationDate < (NSCalendarDate) '2025-10-26 02:10:00 +0100'", &second));
        let first = rec(2, "2025-10-26 02:30:00 +0200");
        assert!(m("modificationDate >= (NSCalendarDate) '2025-10-26 02:30:00'", &first));
        assert!(!m("modificationDate > (NSCalendarDate) '2025-10-26 02:30:00'", &first));
    }

    #[test]
    fn garbage_is_rejected() {
        for q in [
            "",
            "firstName",
            "firstName = ",
            "nosuchfield = 1",
            "a = 'x",
            "firstName = 'x' AND",
            "(_id = 1",
            "_id ~ 2",
            "toCompany.name = 'x'",
        ] {
            assert!(parse(q, Entity::Employee).is_err(), "{q} should fail");
        }
    }

    #[test]
    fn relations_compare_by_id() {
        let mut r = rec(5, "2025-06-01 12:00:00");
        r.entity = Entity::Vacancy;
        r.fields.insert("toCompany".into(), json!({"_id": "17"}));
        assert!(parse("toCompany = 17", Entity::Vacancy).expect("parses").matches(&r));
        assert!(parse("toCompany._id = '17'", Entity::Vacancy).expect("parses").matches(&r));
    }
}
