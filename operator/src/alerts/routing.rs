//! Where the running Alertmanager sends an alert with given labels, and
//! whether the receivers there can notify anyone.
//!
//! Input is the configuration YAML that Alertmanager reports in
//! `config.original` of `GET /api/v2/status` (the configuration it loaded,
//! written back out with secrets masked), or a configuration file.
//!
//! Routing follows Alertmanager's own rules:
//! - the root route matches every alert and must name a receiver;
//! - a route matches when all of its matchers match (`matchers:` strings,
//!   and the deprecated `match:` and `match_re:` maps, together); a label
//!   the alert lacks is matched as the empty string;
//! - the tree is searched depth first, children in order; the first child
//!   that matches ends the search at that level unless it has
//!   `continue: true`; a matching route none of whose children match is
//!   where the alert goes, with its receiver or else its nearest ancestor's;
//! - regexes are RE2, anchored at both ends.
//!
//! `matchers:` strings are parsed as Alertmanager's default ("fallback")
//! parser does: the classic parser's result when it accepts the input, else
//! the UTF-8 parser's (which adds quoted and non-ASCII label names).
//!
//! Not modelled: inhibition rules and silences (they suppress alerts, they
//! do not route them), and the times of `mute_time_intervals` and
//! `active_time_intervals`, which [`Delivery`] names for the caller to judge.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::LazyLock;

use regex::{Regex, RegexBuilder};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::alerts::Error;

/// One route an alert ends at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The receiver's name (the route's own, or inherited).
    pub receiver: String,
    /// Where the route is in the tree, e.g. `route.routes[1].routes[0]`.
    pub route: String,
    /// Kinds of the receiver's non-empty `*_configs` lists, e.g.
    /// `["email", "webhook"]`; empty for a receiver such as the common
    /// "null" one, which swallows alerts.
    pub integrations: Vec<String>,
    /// Time intervals during which this route sends nothing. Alertmanager
    /// does not inherit these from the parent route.
    pub mute_time_intervals: Vec<String>,
    /// If not empty, the route sends only during these time intervals.
    pub active_time_intervals: Vec<String>,
}

impl Delivery {
    /// The receiver has at least one integration that can notify someone.
    pub fn delivers(&self) -> bool {
        !self.integrations.is_empty()
    }
}

/// The `config.original` string of Alertmanager's `GET /api/v2/status`
/// answer (`{"cluster": .., "config": {"original": "<yaml>"}, ..}`).
pub fn original_config(status_json: &str) -> Result<String, Error> {
    #[derive(Deserialize)]
    struct Status {
        config: StatusConfig,
    }
    #[derive(Deserialize)]
    struct StatusConfig {
        original: String,
    }
    let status: Status = serde_json::from_str(status_json).map_err(Error::StatusShape)?;
    Ok(status.config.original)
}

/// The routes an alert with `labels` ends at, in Alertmanager's order
/// (that of `amtool config routes test`), one per matching route: the same
/// receiver can appear more than once.
pub fn routes_for(
    config_yaml: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<Delivery>, Error> {
    Ok(RoutingTree::parse(config_yaml)?.routes_for(labels))
}

/// A parsed Alertmanager configuration, to route many label sets.
#[derive(Clone, Debug)]
pub struct RoutingTree {
    root: Route,
    /// Receiver name → kinds of its non-empty `*_configs` lists.
    receivers: BTreeMap<String, Vec<String>>,
}

impl RoutingTree {
    /// Reads the configuration, refusing what Alertmanager would refuse
    /// about routes, matchers and receivers.
    pub fn parse(config_yaml: &str) -> Result<Self, Error> {
        let raw: RawConfig =
            serde_saphyr::from_str(config_yaml).map_err(|e| Error::ConfigYaml(e.to_string()))?;
        let mut receivers = BTreeMap::new();
        for r in raw.receivers.unwrap_or_default() {
            let kinds: Vec<String> = r.integrations.into_iter().collect();
            if receivers.insert(r.name.clone(), kinds).is_some() {
                return Err(Error::ConfigYaml(format!(
                    "receiver {:?} is defined more than once",
                    r.name
                )));
            }
        }
        let raw_root = raw.route.ok_or(Error::NoRoute)?;
        let has_matchers = raw_root.matchers.as_ref().is_some_and(|m| !m.is_empty())
            || raw_root.match_.as_ref().is_some_and(|m| !m.is_empty())
            || raw_root.match_re.as_ref().is_some_and(|m| !m.is_empty());
        if has_matchers || raw_root.continue_.unwrap_or(false) {
            return Err(Error::RootNotCatchAll);
        }
        let root_receiver = raw_root.receiver.clone().unwrap_or_default();
        if root_receiver.is_empty() {
            return Err(Error::RootWithoutReceiver);
        }
        let root = Route::build(raw_root, "route".to_string(), &root_receiver, &receivers)?;
        Ok(Self { root, receivers })
    }

    /// The routes an alert with `labels` ends at; see [`routes_for`].
    pub fn routes_for(&self, labels: &BTreeMap<String, String>) -> Vec<Delivery> {
        let mut out = Vec::new();
        self.root.collect(labels, &mut out);
        out.into_iter()
            .map(|route| Delivery {
                receiver: route.receiver.clone(),
                route: route.path.clone(),
                integrations: self
                    .receivers
                    .get(&route.receiver)
                    .cloned()
                    .unwrap_or_default(),
                mute_time_intervals: route.mute_time_intervals.clone(),
                active_time_intervals: route.active_time_intervals.clone(),
            })
            .collect()
    }
}

#[derive(Clone, Debug)]
struct Route {
    path: String,
    receiver: String,
    continue_: bool,
    matchers: Vec<Matcher>,
    routes: Vec<Route>,
    mute_time_intervals: Vec<String>,
    active_time_intervals: Vec<String>,
}

impl Route {
    fn build(
        raw: RawRoute,
        path: String,
        inherited: &str,
        receivers: &BTreeMap<String, Vec<String>>,
    ) -> Result<Self, Error> {
        let receiver = match raw.receiver.filter(|r| !r.is_empty()) {
            Some(r) if !receivers.contains_key(&r) => {
                return Err(Error::UndefinedReceiver {
                    route: path,
                    receiver: r,
                });
            }
            Some(r) => r,
            None => inherited.to_string(),
        };
        let bad = |matcher: String, reason: String| Error::Matcher {
            route: path.clone(),
            matcher,
            reason,
        };
        let mut matchers = Vec::new();
        for (name, value) in raw.match_.unwrap_or_default() {
            if !is_classic_label_name(&name) {
                return Err(bad(name, "invalid label name".to_string()));
            }
            matchers.push(Matcher::equal(name, value.unwrap_or_default()));
        }
        for (name, value) in raw.match_re.unwrap_or_default() {
            if !is_classic_label_name(&name) {
                return Err(bad(name, "invalid label name".to_string()));
            }
            let Some(value) = value else {
                return Err(bad(name, "invalid regexp value".to_string()));
            };
            let m = Matcher::new(name.clone(), Op::Regex, value).map_err(|e| bad(name, e))?;
            matchers.push(m);
        }
        for line in raw.matchers.unwrap_or_default() {
            matchers.extend(parse_matchers(&line).map_err(|e| bad(line.clone(), e))?);
        }
        let mut routes = Vec::new();
        for (i, child) in raw.routes.unwrap_or_default().into_iter().enumerate() {
            routes.push(Route::build(
                child,
                format!("{path}.routes[{i}]"),
                &receiver,
                receivers,
            )?);
        }
        Ok(Self {
            path,
            receiver,
            continue_: raw.continue_.unwrap_or(false),
            matchers,
            routes,
            mute_time_intervals: raw.mute_time_intervals.unwrap_or_default(),
            active_time_intervals: raw.active_time_intervals.unwrap_or_default(),
        })
    }

    /// Appends the routes the alert ends at under this one; false when
    /// this route does not match.
    fn collect<'a>(&'a self, labels: &BTreeMap<String, String>, out: &mut Vec<&'a Route>) -> bool {
        if !self.matchers.iter().all(|m| m.matches(labels)) {
            return false;
        }
        let before = out.len();
        for child in &self.routes {
            // A matching child always yields at least itself.
            if child.collect(labels, out) && !child.continue_ {
                break;
            }
        }
        if out.len() == before {
            out.push(self);
        }
        true
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

#[derive(Clone, Debug)]
struct Matcher {
    name: String,
    op: Op,
    value: String,
    re: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl Matcher {
    fn equal(name: String, value: String) -> Self {
        Self {
            name,
            op: Op::Equal,
            value,
            re: None,
        }
    }

    fn new(name: String, op: Op, value: String) -> Result<Self, String> {
        let re = match op {
            Op::Regex | Op::NotRegex => Some(anchored_regex(&value)?),
            Op::Equal | Op::NotEqual => None,
        };
        Ok(Self {
            name,
            op,
            value,
            re,
        })
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map(String::as_str).unwrap_or("");
        let re_matches = || self.re.as_ref().is_some_and(|re| re.is_match(v));
        match self.op {
            Op::Equal => v == self.value,
            Op::NotEqual => v != self.value,
            Op::Regex => re_matches(),
            Op::NotRegex => !re_matches(),
        }
    }
}

fn is_classic_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Compiles a Go (RE2) regex the way Alertmanager does, `^(?:re)$`.
fn anchored_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{})$", go_regex_to_rust(pattern)))
        .octal(true)
        .build()
        .map_err(|e| e.to_string())
}

/// Rewrites the few RE2 (Go) constructs that mean something else, or
/// nothing, to the regex crate: Go's `\d \w \s \b` are ASCII-only (the
/// crate's are Unicode); Go reads `&&`, `~~`, `--` and `[` in a class, and a
/// `{` that starts no repetition, literally (the crate would read set
/// operations, a nested class, an error); and Go has `\Q..\E`.
fn go_regex_to_rust(pattern: &str) -> String {
    const SPACE: &str = r"\t\n\x0C\r\x20";
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut in_class = false;
    // Position within the current class, to spot a leading `^` and `]`.
    let mut class_pos = 0usize;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            let Some(&next) = chars.get(i + 1) else {
                out.push('\\');
                break;
            };
            i += 2;
            class_pos += 1;
            match (next, in_class) {
                ('d', false) => out.push_str("[0-9]"),
                ('d', true) => out.push_str("0-9"),
                ('D', _) => out.push_str("[^0-9]"),
                ('w', false) => out.push_str("[0-9A-Za-z_]"),
                ('w', true) => out.push_str("0-9A-Za-z_"),
                ('W', _) => out.push_str("[^0-9A-Za-z_]"),
                ('s', false) => out.push_str(&format!("[{SPACE}]")),
                ('s', true) => out.push_str(SPACE),
                ('S', _) => out.push_str(&format!("[^{SPACE}]")),
                ('b', false) => out.push_str(r"(?-u:\b)"),
                ('B', false) => out.push_str(r"(?-u:\B)"),
                ('Q', _) => {
                    let mut literal = String::new();
                    while i < chars.len() && !(chars[i] == '\\' && chars.get(i + 1) == Some(&'E')) {
                        literal.push(chars[i]);
                        i += 1;
                    }
                    i += 2;
                    out.push_str(&regex::escape(&literal));
                }
                (other, _) => {
                    out.push('\\');
                    out.push(other);
                }
            }
            continue;
        }
        if in_class {
            match c {
                '^' if class_pos == 0 => {
                    out.push('^');
                    // `]` right after `[^` is still literal.
                    i += 1;
                    continue;
                }
                ']' if class_pos == 0 => out.push_str(r"\]"),
                ']' => {
                    out.push(']');
                    in_class = false;
                }
                '[' if chars.get(i + 1) == Some(&':') => {
                    // A POSIX class such as [:alpha:], the same in both.
                    let rest: String = chars[i..].iter().collect();
                    if let Some(end) = rest.find(":]") {
                        out.push_str(&rest[..end + 2]);
                        i += rest[..end + 2].chars().count();
                        class_pos += 1;
                        continue;
                    }
                    out.push_str(r"\[");
                }
                '[' | '&' | '~' => {
                    out.push('\\');
                    out.push(c);
                }
                '-' if chars.get(i + 1) == Some(&'-') => out.push_str(r"\-"),
                _ => out.push(c),
            }
            class_pos += 1;
            i += 1;
            continue;
        }
        match c {
            '[' => {
                in_class = true;
                class_pos = 0;
                out.push('[');
            }
            '{' => {
                let rest: String = chars[i..].iter().collect();
                match repetition_len(&rest) {
                    Some(len) => {
                        out.push_str(&rest[..len]);
                        i += len;
                        continue;
                    }
                    None => out.push_str(r"\{"),
                }
            }
            '}' => out.push_str(r"\}"),
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

/// Length in bytes (all ASCII) of a `{n}`, `{n,}` or `{n,m}` repetition at
/// the start of `s`.
fn repetition_len(s: &str) -> Option<usize> {
    let body = s.strip_prefix('{')?;
    let end = body.find('}')?;
    let inner = &body[..end];
    let (min, max) = match inner.split_once(',') {
        Some((min, max)) => (min, Some(max)),
        None => (inner, None),
    };
    let digits = |d: &str| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit());
    let ok = digits(min) && max.is_none_or(|m| m.is_empty() || digits(m));
    ok.then_some(end + 2)
}

/// One `matchers:` entry, which may hold several comma-separated matchers.
fn parse_matchers(input: &str) -> Result<Vec<Matcher>, String> {
    match parse_matchers_classic(input) {
        Ok(m) => Ok(m),
        Err(classic) => utf8::parse_matchers(input).map_err(|_| classic),
    }
}

/// Alertmanager's classic matchers parser.
fn parse_matchers_classic(input: &str) -> Result<Vec<Matcher>, String> {
    let s = input.strip_prefix('{').unwrap_or(input);
    let s = s.strip_suffix('}').unwrap_or(s);
    let mut tokens = Vec::new();
    let mut token = String::new();
    let (mut inside_quotes, mut escaped) = (false, false);
    for c in s.chars() {
        match c {
            ',' if !inside_quotes => {
                tokens.push(std::mem::take(&mut token));
                continue;
            }
            // A comma inside quotes leaves `escaped` as it was.
            ',' => {}
            '"' if escaped => escaped = false,
            '"' => inside_quotes = !inside_quotes,
            '\\' => escaped = !escaped,
            _ => escaped = false,
        }
        token.push(c);
    }
    let last = token.trim();
    if !last.is_empty() {
        tokens.push(last.to_string());
    }
    tokens.iter().map(|t| parse_matcher_classic(t)).collect()
}

fn parse_matcher_classic(s: &str) -> Result<Matcher, String> {
    // Go's `\s` is these five; `(?s)` lets the value span lines.
    static MATCHER: LazyLock<Result<Regex, regex::Error>> = LazyLock::new(|| {
        Regex::new(
            r"^[\t\n\x0C\r ]*([a-zA-Z_:][a-zA-Z0-9_:]*)[\t\n\x0C\r ]*(=~|=|!=|!~)[\t\n\x0C\r ]*((?s).*?)[\t\n\x0C\r ]*$",
        )
    });
    let re = MATCHER.as_ref().map_err(|e| e.to_string())?;
    let caps = re
        .captures(s)
        .ok_or_else(|| format!("bad matcher format: {s}"))?;
    let (name, op, raw) = (&caps[1], &caps[2], &caps[3]);
    let (raw, mut expect_trailing_quote) = match raw.strip_prefix('"') {
        Some(rest) => (rest, true),
        None => (raw, false),
    };
    let mut value = String::with_capacity(raw.len());
    let mut escaped = false;
    for (i, c) in raw.char_indices() {
        if escaped {
            escaped = false;
            match c {
                'n' => value.push('\n'),
                '"' | '\\' => value.push(c),
                // A spurious escape stays a literal backslash.
                _ => {
                    value.push('\\');
                    value.push(c);
                }
            }
            continue;
        }
        match c {
            '\\' if i + 1 < raw.len() => escaped = true,
            '\\' => value.push('\\'),
            '"' if !expect_trailing_quote || i + 1 < raw.len() => {
                return Err(format!(
                    "matcher value contains unescaped double quote: {}",
                    &caps[3]
                ));
            }
            '"' => expect_trailing_quote = false,
            _ => value.push(c),
        }
    }
    if expect_trailing_quote {
        return Err(format!(
            "matcher value contains unescaped double quote: {}",
            &caps[3]
        ));
    }
    Matcher::new(name.to_string(), op_of(op), value)
}

fn op_of(op: &str) -> Op {
    match op {
        "!=" => Op::NotEqual,
        "=~" => Op::Regex,
        "!~" => Op::NotRegex,
        _ => Op::Equal,
    }
}

/// Alertmanager's UTF-8 matchers parser (`{` optional, comma-separated
/// matchers, names and values either Go-quoted or free of reserved
/// characters), used when the classic parser refuses an input.
mod utf8 {
    use super::{Matcher, Op};

    #[derive(Clone, Debug, PartialEq)]
    enum Token {
        Open,
        Close,
        Comma,
        Op(Op),
        Quoted(String),
        Unquoted(String),
    }

    fn is_reserved(c: char) -> bool {
        c.is_whitespace() || "{}!=~,\\\"'`".contains(c)
    }

    fn lex(input: &str) -> Result<Vec<Token>, String> {
        let chars: Vec<char> = input.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            match c {
                '{' => tokens.push(Token::Open),
                '}' => tokens.push(Token::Close),
                ',' => tokens.push(Token::Comma),
                '=' | '!' => {
                    let next = chars.get(i + 1).copied();
                    let op = match (c, next) {
                        ('!', Some('=')) => Op::NotEqual,
                        ('!', Some('~')) => Op::NotRegex,
                        ('=', Some('~')) => Op::Regex,
                        ('=', _) => Op::Equal,
                        _ => return Err(format!("{i}: expected one of '=~' after '!'")),
                    };
                    if op != Op::Equal {
                        i += 1;
                    }
                    tokens.push(Token::Op(op));
                }
                '"' => {
                    let start = i;
                    i += 1;
                    let mut escaped = false;
                    while i < chars.len() && (escaped || chars[i] != '"') {
                        escaped = !escaped && chars[i] == '\\';
                        i += 1;
                    }
                    if i >= chars.len() {
                        return Err(format!("{start}: missing end \""));
                    }
                    tokens.push(Token::Quoted(chars[start..=i].iter().collect()));
                }
                c if c.is_whitespace() => {}
                c if !is_reserved(c) => {
                    let start = i;
                    while i + 1 < chars.len() && !is_reserved(chars[i + 1]) {
                        i += 1;
                    }
                    tokens.push(Token::Unquoted(chars[start..=i].iter().collect()));
                }
                c => return Err(format!("{i}: {c}: invalid input")),
            }
            i += 1;
        }
        Ok(tokens)
    }

    fn text(token: Option<&Token>) -> Result<String, String> {
        match token {
            Some(Token::Quoted(q)) => unquote(q),
            Some(Token::Unquoted(u)) => Ok(u.clone()),
            other => Err(format!("expected a label name or value, found {other:?}")),
        }
    }

    pub(super) fn parse_matchers(input: &str) -> Result<Vec<Matcher>, String> {
        let tokens = lex(input)?;
        let mut pos = 0;
        let has_open = tokens.first() == Some(&Token::Open);
        if has_open {
            pos += 1;
        }
        let mut matchers = Vec::new();
        loop {
            match tokens.get(pos) {
                None | Some(Token::Close) => break,
                _ => {}
            }
            let name = text(tokens.get(pos))?;
            let Some(Token::Op(op)) = tokens.get(pos + 1) else {
                return Err("expected an operator such as '=', '!=', '=~' or '!~'".to_string());
            };
            let value = text(tokens.get(pos + 2))?;
            matchers.push(Matcher::new(name, *op, value)?);
            pos += 3;
            match tokens.get(pos) {
                Some(Token::Comma) => pos += 1,
                None | Some(Token::Close) => break,
                Some(t) => return Err(format!("expected a comma or close brace, found {t:?}")),
            }
        }
        match (has_open, tokens.get(pos)) {
            (true, Some(Token::Close)) => pos += 1,
            (true, _) => return Err("expected close brace".to_string()),
            (false, Some(Token::Close)) => return Err("expected opening brace".to_string()),
            (false, _) => {}
        }
        if pos != tokens.len() {
            return Err("expected end of input".to_string());
        }
        Ok(matchers)
    }

    /// Go's strconv.Unquote of a double-quoted literal.
    fn unquote(quoted: &str) -> Result<String, String> {
        let bad = || format!("{quoted}: invalid input");
        let inner = quoted
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .ok_or_else(bad)?;
        let mut bytes = Vec::with_capacity(inner.len());
        let mut chars = inner.chars();
        let push = |bytes: &mut Vec<u8>, c: char| {
            let mut buf = [0u8; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        };
        while let Some(c) = chars.next() {
            match c {
                '\n' | '"' => return Err(bad()),
                '\\' => {}
                c => {
                    push(&mut bytes, c);
                    continue;
                }
            }
            let hex = |chars: &mut std::str::Chars<'_>, n: usize| -> Result<u32, String> {
                let digits: String = chars.by_ref().take(n).collect();
                if digits.len() != n {
                    return Err(bad());
                }
                u32::from_str_radix(&digits, 16).map_err(|_| bad())
            };
            match chars.next().ok_or_else(bad)? {
                'a' => bytes.push(0x07),
                'b' => bytes.push(0x08),
                'f' => bytes.push(0x0C),
                'n' => bytes.push(b'\n'),
                'r' => bytes.push(b'\r'),
                't' => bytes.push(b'\t'),
                'v' => bytes.push(0x0B),
                '\\' => bytes.push(b'\\'),
                '"' => bytes.push(b'"'),
                'x' => bytes.push(u8::try_from(hex(&mut chars, 2)?).map_err(|_| bad())?),
                'u' => push(
                    &mut bytes,
                    char::from_u32(hex(&mut chars, 4)?).ok_or_else(bad)?,
                ),
                'U' => push(
                    &mut bytes,
                    char::from_u32(hex(&mut chars, 8)?).ok_or_else(bad)?,
                ),
                d @ '0'..='7' => {
                    let rest: String = chars.by_ref().take(2).collect();
                    let digits = format!("{d}{rest}");
                    if digits.len() != 3 {
                        return Err(bad());
                    }
                    let v = u32::from_str_radix(&digits, 8).map_err(|_| bad())?;
                    bytes.push(u8::try_from(v).map_err(|_| bad())?);
                }
                _ => return Err(bad()),
            }
        }
        String::from_utf8(bytes).map_err(|_| format!("{quoted}: invalid UTF-8"))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn go_unquote() {
            assert_eq!(
                unquote(r#""a\"b\\c\n\x41\u00e9\101""#).unwrap(),
                "a\"b\\c\nAéA"
            );
            assert!(unquote(r#""a\'""#).is_err());
            assert!(unquote(r#""\xff""#).is_err());
            assert!(unquote("\"a\nb\"").is_err());
        }
    }
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    route: Option<RawRoute>,
    #[serde(default)]
    receivers: Option<Vec<RawReceiver>>,
}

#[derive(Deserialize)]
struct RawRoute {
    #[serde(default)]
    receiver: Option<String>,
    #[serde(default)]
    routes: Option<Vec<RawRoute>>,
    #[serde(default, rename = "continue")]
    continue_: Option<bool>,
    #[serde(default)]
    matchers: Option<Vec<String>>,
    #[serde(default, rename = "match")]
    match_: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    match_re: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    mute_time_intervals: Option<Vec<String>>,
    #[serde(default)]
    active_time_intervals: Option<Vec<String>>,
}

/// A receiver's name and the kinds of its non-empty `*_configs` lists;
/// the integrations' settings are not needed, and new kinds count without
/// a change here.
struct RawReceiver {
    name: String,
    integrations: BTreeSet<String>,
}

impl<'de> Deserialize<'de> for RawReceiver {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ReceiverVisitor;
        impl<'de> Visitor<'de> for ReceiverVisitor {
            type Value = RawReceiver;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a receiver (a map with `name` and `*_configs` lists)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawReceiver, A::Error> {
                let mut name = None;
                let mut integrations = BTreeSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "name" {
                        name = Some(map.next_value::<String>()?);
                    } else if let Some(kind) = key.strip_suffix("_configs") {
                        if map.next_value::<ConfigCount>()?.0 > 0 {
                            integrations.insert(kind.to_string());
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
                Ok(RawReceiver { name, integrations })
            }
        }
        deserializer.deserialize_map(ReceiverVisitor)
    }
}

/// How many non-null entries a `*_configs` list has (null counts as empty).
struct ConfigCount(usize);

impl<'de> Deserialize<'de> for ConfigCount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountVisitor;
        impl<'de> Visitor<'de> for CountVisitor {
            type Value = ConfigCount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of integration configurations")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ConfigCount, A::Error> {
                let mut n = 0;
                while let Some(entry) = seq.next_element::<Option<IgnoredAny>>()? {
                    n += usize::from(entry.is_some());
                }
                Ok(ConfigCount(n))
            }
            fn visit_unit<E: de::Error>(self) -> Result<ConfigCount, E> {
                Ok(ConfigCount(0))
            }
            fn visit_none<E: de::Error>(self) -> Result<ConfigCount, E> {
                Ok(ConfigCount(0))
            }
        }
        deserializer.deserialize_any(CountVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn receivers(config: &str, pairs: &[(&str, &str)]) -> Vec<String> {
        routes_for(config, &labels(pairs))
            .unwrap()
            .into_iter()
            .map(|d| d.receiver)
            .collect()
    }

    const NESTED: &str = include_str!("testdata/am-nested.yaml");
    const CONTINUE: &str = include_str!("testdata/am-continue.yaml");
    const CLASSIC: &str = include_str!("testdata/am-classic.yaml");

    #[test]
    fn nested_routes_and_inherited_receivers() {
        // Root only: the default receiver, which has no integration.
        let d = routes_for(NESTED, &labels(&[("alertname", "Other")])).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].receiver, "null");
        assert_eq!(d[0].route, "route");
        assert!(!d[0].delivers());
        // Into the namespace route, whose receiver the severity child inherits.
        let d = routes_for(
            NESTED,
            &labels(&[("namespace", "plant"), ("severity", "critical")]),
        )
        .unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].receiver, "plant-team");
        assert_eq!(d[0].route, "route.routes[0].routes[1]");
        assert_eq!(d[0].integrations, ["email", "webhook"]);
        assert!(d[0].delivers());
        // A child with its own receiver.
        assert_eq!(
            receivers(NESTED, &[("namespace", "plant"), ("severity", "info")]),
            ["plant-tickets"]
        );
        // Matches the parent but no child: the parent itself.
        assert_eq!(receivers(NESTED, &[("namespace", "plant")]), ["plant-team"]);
        // First match wins: the second sibling would match too.
        assert_eq!(
            receivers(NESTED, &[("namespace", "office"), ("team", "it")]),
            ["office"]
        );
    }

    #[test]
    fn continue_collects_more_routes() {
        let all = [
            ("iotsystem", "line-1"),
            ("iotsystem_namespace", "plant"),
            ("severity", "warning"),
        ];
        let d = routes_for(CONTINUE, &labels(&all)).unwrap();
        let got: Vec<(&str, bool)> = d
            .iter()
            .map(|d| (d.receiver.as_str(), d.delivers()))
            .collect();
        assert_eq!(
            got,
            [("audit-log", true), ("null", false), ("oncall", true)]
        );
        // Route options are not inherited for mute intervals.
        assert_eq!(d[2].mute_time_intervals, ["weekends"]);
        assert!(d[0].mute_time_intervals.is_empty());
        // The last `continue` child stops nothing after it, a plain one does.
        assert_eq!(
            receivers(CONTINUE, &[("severity", "critical")]),
            ["audit-log", "pager", "pager"]
        );
    }

    #[test]
    fn both_matcher_syntaxes() {
        for (pairs, want) in classic_cases() {
            assert_eq!(receivers(CLASSIC, pairs), [want], "labels {pairs:?}");
        }
        // Label names only the UTF-8 parser reads, quoted or not.
        let config = r#"
route:
  receiver: default
  routes:
    - matchers: ['{"service.name"="web"}']
      receiver: quoted-name
    - matchers: [host.name=~"gw-.*"]
      receiver: dotted-name
receivers: [{name: default}, {name: quoted-name}, {name: dotted-name}]
"#;
        assert_eq!(
            receivers(config, &[("service.name", "web")]),
            ["quoted-name"]
        );
        assert_eq!(receivers(config, &[("host.name", "gw-1")]), ["dotted-name"]);
        assert_eq!(receivers(config, &[("host_name", "gw-1")]), ["default"]);
    }

    /// Label sets for testdata/am-classic.yaml and the receiver each goes to.
    fn classic_cases() -> Vec<(&'static [(&'static str, &'static str)], &'static str)> {
        vec![
            (&[("alertname", "IoTSensorSilent")], "iot-regex"),
            // Anchored: a longer name does not match.
            (&[("alertname", "XIoTSensorSilent")], "default"),
            (
                &[
                    ("alertname", "IoTFailedLoginBurst"),
                    ("severity", "critical"),
                ],
                "iot-critical",
            ),
            (&[("alertname", "IoTFailedLoginBurst")], "default"),
            (&[("team", "a"), ("env", "prod")], "old-match"),
            (&[("team", "a"), ("env", "dev")], "default"),
            (&[("code", "503")], "old-match-re"),
            (&[("code", "5030")], "default"),
            (&[("dept", "x")], "not-equal"),
            (&[("dept", "ops")], "default"),
            // A missing label is empty, so `region!~"eu-.*"` matches.
            (&[("zone", "z1")], "not-regex"),
            (&[("zone", "z1"), ("region", "eu-west")], "default"),
            (&[("quoted", "a,b \"c\"")], "quoted"),
            (&[("unquoted", "plain")], "unquoted"),
            (&[("multi", "1"), ("other", "2")], "multi"),
            (&[("multi", "1")], "default"),
            (&[("digits", "42")], "ascii-digits"),
            // Go's \d is ASCII only.
            (&[("digits", "٤٢")], "default"),
            // An unquoted YAML 500 is the string "500".
            (&[("numeric", "500")], "numeric"),
            (&[("word", "ab_9")], "word"),
            (&[("word", "é")], "default"),
            (&[("braces", "x{foo}")], "braces"),
            (&[("slash", r"a\b")], "slash"),
            (&[("kind", "e")], "empty-value"),
            (&[("kind", "e"), ("empty", "")], "empty-value"),
            (&[("kind", "e"), ("empty", "x")], "default"),
            (&[], "default"),
        ]
    }

    #[test]
    fn classic_matcher_parser() {
        let m = parse_matchers_classic(r#"{foo = "bar", dings != "bums", }"#).unwrap();
        assert_eq!(
            m,
            [
                Matcher::new("foo".into(), Op::Equal, "bar".into()).unwrap(),
                Matcher::new("dings".into(), Op::NotEqual, "bums".into()).unwrap(),
            ]
        );
        let m = parse_matchers_classic(r#"quote="She said: \"Hi, ladies!\"""#).unwrap();
        assert_eq!(m[0].value, r#"She said: "Hi, ladies!""#);
        let m = parse_matchers_classic(r#"statuscode=~"5..""#).unwrap();
        assert_eq!(m[0].op, Op::Regex);
        // Spurious escapes stay, a trailing backslash is literal.
        let m = parse_matchers_classic(r"a=x\y\").unwrap();
        assert_eq!(m[0].value, r"x\y\");
        let m = parse_matchers_classic("a=bar baz").unwrap();
        assert_eq!(m[0].value, "bar baz");
        assert!(parse_matchers_classic(r#"a="b"#).is_err());
        assert!(parse_matchers_classic(r#"a=b"c"#).is_err());
        assert!(parse_matchers_classic("a=b,,c=d").is_err());
        assert!(parse_matchers_classic("a=~(").is_err());
        assert!(parse_matchers_classic("a.b=c").is_err());
        assert!(parse_matchers_classic("").unwrap().is_empty());
    }

    proptest::proptest! {
        /// A value written as Alertmanager writes matchers back out (in
        /// `config.original`) reads back as itself.
        #[test]
        fn written_matchers_read_back(value in proptest::prelude::any::<String>(), op in 0..4usize) {
            let ops = ["=", "!=", "=~", "!~"];
            let escaped = value.replace('\\', r"\\").replace('\n', r"\n").replace('"', "\\\"");
            let parsed = parse_matchers_classic(&format!("name{}\"{escaped}\"", ops[op]));
            if let Ok(m) = parsed {
                proptest::prop_assert_eq!(&m[0].value, &value);
                proptest::prop_assert_eq!(m.len(), 1);
            } else {
                // Only a regex the regex crate refuses may fail.
                proptest::prop_assert!(op >= 2 && anchored_regex(&value).is_err());
            }
        }
    }

    #[test]
    fn utf8_matcher_parser_is_the_fallback() {
        let m = parse_matchers(r#"{"service.name"="web", "ünï"=~"a|b"}"#).unwrap();
        assert_eq!(m[0].name, "service.name");
        assert_eq!(m[1].name, "ünï");
        let m = parse_matchers("service.name=web").unwrap();
        assert_eq!(m[0].value, "web");
        assert!(parse_matchers(r#"{"a"="b""#).is_err());
        assert!(parse_matchers("a.b~c").is_err());
    }

    #[test]
    fn go_regexes() {
        let yes = |re: &str, s: &str| anchored_regex(re).unwrap().is_match(s);
        assert!(yes(r"\d+", "42"));
        assert!(!yes(r"\d+", "٤٢"));
        assert!(yes(r"[\d.]+", "4.2"));
        assert!(yes(r"\w+", "a_1"));
        assert!(!yes(r"\w+", "é"));
        assert!(yes(r"a\sb", "a b"));
        assert!(yes(r"[a&&b]+", "a&b"));
        assert!(yes(r"[[a]+", "[a"));
        assert!(yes(r"[]a]+", "]a"));
        assert!(yes(r"[^]a]+", "bc"));
        assert!(yes(r"[[:alpha:]]+", "ab"));
        assert!(yes(r"x{2}", "xx"));
        assert!(yes(r"x{foo}", "x{foo}"));
        assert!(yes(r"\Q.*\E", ".*"));
        assert!(!yes(r"\Q.*\E", "ab"));
        assert!(yes(r"a|b", "b"));
        assert!(!yes(r"a|b", "ab"));
        assert!(yes(r"\bfoo\b", "foo"));
    }

    #[test]
    fn receivers_without_integrations_do_not_deliver() {
        let config = r##"
route:
  receiver: "null"
  routes:
    - receiver: empty-lists
      matchers: [a="1"]
    - receiver: null-list
      matchers: [a="2"]
    - receiver: slack
      matchers: [a="3"]
receivers:
  - name: "null"
  - name: empty-lists
    webhook_configs: []
    email_configs: []
  - name: null-list
    webhook_configs:
  - name: slack
    slack_configs:
      - api_url: https://hooks.example/x
        channel: "#iot"
    webhook_configs: []
"##;
        let kinds = |a: &str| {
            let d = routes_for(config, &labels(&[("a", a)])).unwrap();
            (d[0].receiver.clone(), d[0].integrations.clone())
        };
        assert_eq!(kinds("0"), ("null".to_string(), vec![]));
        assert_eq!(kinds("1"), ("empty-lists".to_string(), vec![]));
        assert_eq!(kinds("2"), ("null-list".to_string(), vec![]));
        assert_eq!(kinds("3"), ("slack".to_string(), vec!["slack".to_string()]));
    }

    #[test]
    fn refuses_what_alertmanager_refuses() {
        let err = |yaml: &str| RoutingTree::parse(yaml).unwrap_err();
        assert!(matches!(err("receivers: []"), Error::NoRoute));
        assert!(matches!(
            err("route: {group_by: [a]}\nreceivers: [{name: x}]"),
            Error::RootWithoutReceiver
        ));
        assert!(matches!(
            err("route: {receiver: x, matchers: [a=b]}\nreceivers: [{name: x}]"),
            Error::RootNotCatchAll
        ));
        assert!(matches!(
            err("route: {receiver: x, continue: true}\nreceivers: [{name: x}]"),
            Error::RootNotCatchAll
        ));
        let e = err("route: {receiver: x, routes: [{receiver: y}]}\nreceivers: [{name: x}]");
        assert_eq!(
            e.to_string(),
            "route route.routes[0] names receiver \"y\", which `receivers:` does not define"
        );
        let e = err("route: {receiver: x, routes: [{matchers: ['a=~(']}]}\nreceivers: [{name: x}]");
        assert!(matches!(e, Error::Matcher { .. }), "{e}");
        assert!(matches!(
            err("route: {receiver: x}\nreceivers: [{name: x}, {name: x}]"),
            Error::ConfigYaml(_)
        ));
        assert!(matches!(err("route: [1, 2]"), Error::ConfigYaml(_)));
    }

    /// `/api/v2/status` answers of a real Alertmanager (0.25) running
    /// testdata/am-continue.yaml and am-classic.yaml: `config.original` is
    /// the loaded configuration written back out (matchers re-quoted,
    /// defaults filled in, secrets masked), and routes the same.
    #[test]
    fn real_status_answers() {
        let continue_sets = continue_label_sets();
        let classic_sets: Vec<&[(&str, &str)]> =
            classic_cases().into_iter().map(|(p, _)| p).collect();
        let cases = [
            (
                include_str!("testdata/alertmanager-status.json"),
                CONTINUE,
                continue_sets,
            ),
            (
                include_str!("testdata/alertmanager-status-classic.json"),
                CLASSIC,
                classic_sets,
            ),
        ];
        let summary = |config: &str, pairs: &[(&str, &str)]| -> Vec<(String, Vec<String>)> {
            routes_for(config, &labels(pairs))
                .unwrap()
                .into_iter()
                .map(|d| (d.receiver, d.integrations))
                .collect()
        };
        for (status, file, label_sets) in cases {
            let original = original_config(status).unwrap();
            assert!(original.contains("<secret>") || original.contains("receivers:"));
            for pairs in label_sets {
                assert_eq!(
                    summary(&original, pairs),
                    summary(file, pairs),
                    "labels {pairs:?}"
                );
            }
        }
        let d = routes_for(
            &original_config(include_str!("testdata/alertmanager-status.json")).unwrap(),
            &labels(&[("severity", "critical")]),
        )
        .unwrap();
        assert_eq!(d[1].integrations, ["pagerduty"]);
        assert!(matches!(
            original_config(r#"{"status":"success"}"#),
            Err(Error::StatusShape(_))
        ));
    }

    fn continue_label_sets() -> Vec<&'static [(&'static str, &'static str)]> {
        vec![
            &[("severity", "warning"), ("iotsystem", "line-1")],
            &[("severity", "critical")],
            &[("iotsystem_namespace", "plant"), ("severity", "info")],
            &[],
        ]
    }

    /// Writes a fixture where amtool can read it.
    fn fixture_file(name: &str, content: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("iotposture-am-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Alertmanager's escaping of a label value for `amtool`'s arguments.
    fn amtool_arg(name: &str, value: &str) -> String {
        let escaped = value.replace('\\', r"\\").replace('"', "\\\"");
        format!("{name}=\"{escaped}\"")
    }

    fn amtool_receivers(config: &str, pairs: &[(&str, &str)]) -> Vec<String> {
        let mut args = vec![
            "config".to_string(),
            "routes".to_string(),
            "test".to_string(),
            format!("--config.file={config}"),
        ];
        args.extend(pairs.iter().map(|(k, v)| amtool_arg(k, v)));
        let out = match Command::new("amtool").args(&args).output() {
            Ok(out) => out,
            Err(e) => panic!(
                "amtool is needed for this test (Debian: apt-get install -y prometheus-alertmanager): {e}"
            ),
        };
        assert!(
            out.status.success(),
            "amtool {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().next().unwrap_or("").trim().to_string();
        line.split(',').map(str::to_string).collect()
    }

    /// The receivers resolved here are the ones real Alertmanager resolves
    /// (amtool runs Alertmanager's routing code on the file).
    #[test]
    fn same_receivers_as_amtool() {
        let nested: Vec<&[(&str, &str)]> = vec![
            &[("alertname", "Other")],
            &[("namespace", "plant"), ("severity", "critical")],
            &[("namespace", "plant"), ("severity", "info")],
            &[("namespace", "plant")],
            &[("namespace", "office"), ("team", "it")],
            &[("namespace", "office"), ("team", "ot")],
            &[("namespace", "office")],
            &[("team", "it")],
            &[],
        ];
        let classic: Vec<&[(&str, &str)]> = classic_cases().into_iter().map(|(p, _)| p).collect();
        let fixtures = [
            ("am-nested.yaml", NESTED, nested),
            ("am-continue.yaml", CONTINUE, continue_label_sets()),
            ("am-classic.yaml", CLASSIC, classic),
        ];
        let mut compared = 0;
        for (name, config, label_sets) in fixtures {
            let path = fixture_file(name, config);
            for pairs in label_sets {
                let ours = receivers(config, pairs);
                let theirs = amtool_receivers(&path.to_string_lossy(), pairs);
                assert_eq!(ours, theirs, "{name} with labels {pairs:?}");
                compared += 1;
            }
        }
        assert_eq!(compared, 9 + 4 + 27);
    }

    /// amtool's own validation accepts the fixtures it is compared on.
    #[test]
    fn amtool_checks_the_fixtures() {
        for (name, config) in [
            ("check-nested.yaml", NESTED),
            ("check-continue.yaml", CONTINUE),
            ("check-classic.yaml", CLASSIC),
        ] {
            let path = fixture_file(name, config);
            let out = Command::new("amtool")
                .args(["check-config", &path.to_string_lossy()])
                .output()
                .unwrap_or_else(|e| {
                    panic!("amtool is needed (apt-get install -y prometheus-alertmanager): {e}")
                });
            assert!(
                out.status.success(),
                "{name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
