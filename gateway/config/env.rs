//! `AMTGW_` environment variables as configuration overrides.
//!
//! A variable is configuration only when its first `__`-separated segment names a top-level
//! key of the configuration (`AMTGW_GATEWAY__MAX_CONNECTIONS`, `AMTGW_DEVICES`). Everything
//! else under the prefix belongs to someone else and is ignored: Kubernetes injects
//! `AMTGW_SERVICE_HOST`, `AMTGW_PORT_16992_TCP_ADDR`... into every pod of a namespace with a
//! Service named `amtgw`, and treating those as unknown keys would crash-loop the rollout.
//! Near misses (`AMTGW_GATWAY__...`, `AMTGW_GATEWAY_MAX_CONNECTIONS` with one underscore) are
//! ignored too, but with a warning naming the variable that was probably meant. Inside a known
//! table every typo stays an error, as in the file.
//!
//! The provider is built from (name, value) pairs, so tests and fuzzers can load a config
//! without touching the process environment. Values are parsed here rather than by figment's
//! `Env`: its string unescaping slices by character index, which panics on (or silently
//! corrupts) a quoted value with a backslash after a non-ASCII character.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::ENV_PREFIX;
use super::raw::RawConfig;

/// Nesting deeper than this in one value (`[[[...`) is not structure but an attack on the
/// stack; such a value is taken as a plain string, like any other unparsable one.
const MAX_DEPTH: usize = 32;

/// How far (in edits) a first segment may be from a table name to be reported as a near miss.
const NEAR_MISS_DISTANCE: usize = 2;

/// The `AMTGW_` environment as configuration: which variables override which keys, which were
/// ignored, and what to warn about.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    overrides: Vec<Override>,
    /// Variables that name no configuration key, sorted.
    ignored: Vec<String>,
    warnings: Vec<String>,
    /// `STATE_DIRECTORY`'s first absolute entry: where the pin store goes by default.
    state_directory: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Override {
    /// The variable as it was spelled.
    name: String,
    /// Lowercased key path: `["gateway", "max_connections"]`.
    path: Vec<String>,
    /// The parsed value, or why the variable cannot be used.
    value: Result<Value, String>,
}

/// An `AMTGW_` variable that is configuration but cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvProblem {
    /// The key it was meant for, spelled like the validator's keys (`gateway.max_connections`).
    pub key: String,
    pub message: String,
}

impl Environment {
    /// No variables at all.
    pub fn empty() -> Environment {
        Environment::default()
    }

    /// This process's environment.
    pub fn from_process() -> Environment {
        Environment::from_pairs(std::env::vars_os())
    }

    /// Any (name, value) pairs, as `std::env::vars_os()` yields them. Names without the
    /// `AMTGW_` prefix (matched case-insensitively, as figment's `Env` did) are skipped.
    pub fn from_pairs<I, K, V>(pairs: I) -> Environment
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut env = Environment::default();
        for (name, value) in pairs {
            if name.as_ref() == STATE_DIRECTORY {
                env.state_directory = state_directory(value.as_ref());
                continue;
            }
            let name = name.as_ref().to_string_lossy();
            let Some(rest) = strip_prefix(&name) else {
                continue;
            };
            // AMTGW_CONFIG names the file itself (a CLI flag default), not a key inside it.
            if rest.eq_ignore_ascii_case("config") {
                continue;
            }
            let lower = rest.to_ascii_lowercase();
            let segments: Vec<&str> = lower.split("__").collect();
            let first = segments.first().copied().unwrap_or_default();
            if SCHEMA.field(first).is_none() {
                if let Some(meant) = near_miss(&segments) {
                    env.warnings.push(format!(
                        "environment variable {name} is not configuration and is ignored; \
                         did you mean {meant}? (`__` separates keys)"
                    ));
                }
                env.ignored.push(name.into_owned());
                continue;
            }
            let path: Vec<String> = segments.iter().map(|s| (*s).to_owned()).collect();
            let value = if let Some(empty) = segments.iter().position(|s| s.is_empty()) {
                Err(format!(
                    "environment variable {name} has an empty key after `{}`; \
                     separate keys with exactly two underscores",
                    segments[..empty].join("__").to_ascii_uppercase()
                ))
            } else {
                match value.as_ref().to_str() {
                    Some(text) => Ok(parse_value(text)),
                    None => Err(format!(
                        "environment variable {name} is not valid UTF-8; write the value in UTF-8"
                    )),
                }
            };
            env.overrides.push(Override {
                name: name.into_owned(),
                path,
                value,
            });
        }
        // Deterministic whatever order the environment came in: names differing only in case
        // set the same key, and the last one (in byte order) wins.
        env.overrides.sort_by(|a, b| a.name.cmp(&b.name));
        env.ignored.sort();
        env.warnings.sort();
        env
    }

    /// The first variable that is configuration but cannot be used, if any.
    pub fn problem(&self) -> Option<EnvProblem> {
        self.overrides.iter().find_map(|o| match &o.value {
            Ok(_) => None,
            Err(message) => Some(EnvProblem {
                key: o
                    .path
                    .iter()
                    .take_while(|s| !s.is_empty())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("."),
                message: message.clone(),
            }),
        })
    }

    /// Warnings about variables that look like misspelt configuration, one per variable.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// `AMTGW_` variables that are not configuration (and are not `AMTGW_CONFIG`).
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// The variables that are configuration, by name.
    pub fn overrides(&self) -> impl Iterator<Item = &str> {
        self.overrides.iter().map(|o| o.name.as_str())
    }

    /// The directory given by `STATE_DIRECTORY`, if any: the default pin store lives there
    /// instead of next to the config file.
    pub fn state_directory(&self) -> Option<&Path> {
        self.state_directory.as_deref()
    }
}

/// Set by systemd's `StateDirectory=` (and by the container image): the one directory the
/// service may write. A configuration directory is read-only under both, so a pin store next to
/// the config file could never be written.
const STATE_DIRECTORY: &str = "STATE_DIRECTORY";

/// systemd lists one directory per `StateDirectory=` entry, separated by colons; the first is
/// the service's own. A relative or empty value is no directory at all.
fn state_directory(value: &OsStr) -> Option<PathBuf> {
    let first = value.to_str()?.split(':').next()?;
    let path = Path::new(first);
    path.is_absolute().then(|| path.to_owned())
}

impl Provider for Environment {
    fn metadata(&self) -> Metadata {
        // validate.rs recognises values from here by "environment" in this name.
        Metadata::named(format!("`{ENV_PREFIX}` environment variable(s)"))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for o in &self.overrides {
            if let Ok(value) = &o.value {
                insert(&mut dict, &o.path, value.clone());
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Set `path` in `dict`, merging with tables set by other variables
/// (`AMTGW_GATEWAY='{workers=2}'` and `AMTGW_GATEWAY__BUSY_POLL=1ms` both apply).
fn insert(dict: &mut Dict, path: &[String], value: Value) {
    let Some((key, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        match (dict.get_mut(key), value) {
            (Some(Value::Dict(_, existing)), Value::Dict(_, new)) => {
                for (k, v) in new {
                    insert(existing, &[k], v);
                }
            }
            (_, value) => {
                dict.insert(key.clone(), value);
            }
        }
        return;
    }
    let entry = dict
        .entry(key.clone())
        .or_insert_with(|| Value::from(Dict::new()));
    if !matches!(entry, Value::Dict(..)) {
        *entry = Value::from(Dict::new());
    }
    if let Value::Dict(_, inner) = entry {
        insert(inner, rest, value);
    }
}

fn strip_prefix(name: &str) -> Option<&str> {
    let head = name.get(..ENV_PREFIX.len())?;
    head.eq_ignore_ascii_case(ENV_PREFIX)
        .then(|| &name[ENV_PREFIX.len()..])
}

/// The variable an ignored one probably meant, if it is close to configuration: a first
/// segment a typo away from a table (`GATWAY__...`), or a key path written with single
/// underscores (`GATEWAY_MAX_CONNECTIONS`). Kubernetes' variables (`AMTGW_GATEWAY_SERVICE_HOST`
/// from a Service named `amtgw-gateway`) match neither, so they are ignored silently.
fn near_miss(segments: &[&str]) -> Option<String> {
    let first = segments.first()?;
    if let Some(table) = SCHEMA.tables().find(|table| {
        let distance = edit_distance(first, table, NEAR_MISS_DISTANCE);
        distance > 0 && distance <= NEAR_MISS_DISTANCE
    }) {
        let mut meant = vec![table.to_owned()];
        meant.extend(segments[1..].iter().map(|s| (*s).to_owned()));
        return Some(variable(&meant));
    }
    let flat = segments.join("_");
    SCHEMA.path_of(&flat).map(|path| variable(&path))
}

fn variable(path: &[String]) -> String {
    format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase())
}

/// Levenshtein distance between `a` and `b`, or anything above `limit` once it is sure to
/// exceed it (names can be long; only small distances matter).
fn edit_distance(a: &str, b: &str, limit: usize) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > limit {
        return limit + 1;
    }
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The configuration's key tree as environment variables can reach it: tables (serde structs)
/// and their keys. Read from the serde shapes themselves (see [`Schema::probe`]), so a key added
/// to `raw.rs` is known here without a second list to keep in step.
#[derive(Debug, Default)]
struct Schema {
    fields: BTreeMap<&'static str, Option<Schema>>,
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema::probe(&[]).unwrap_or_default());

impl Schema {
    /// The keys of the table at `path`, found by asking serde: every table denies unknown
    /// fields, and the error for an unknown one lists the fields it expected. `None` if `path`
    /// is not a table (a value, or an array like `devices` that is set whole).
    fn probe(path: &[&'static str]) -> Option<Schema> {
        const UNKNOWN: &str = "\u{0}";
        let mut value = Value::from(BTreeMap::from([(UNKNOWN.to_owned(), Value::from(0u8))]));
        for key in path.iter().rev() {
            value = Value::from(BTreeMap::from([((*key).to_owned(), value)]));
        }
        let error = Figment::from(figment::providers::Serialized::defaults(value))
            .extract::<RawConfig>()
            .err()?;
        let figment::error::Kind::UnknownField(field, expected) = &error.kind else {
            return None;
        };
        let at = error.path.iter().map(String::as_str).take(path.len());
        if field != UNKNOWN || !at.eq(path.iter().copied()) {
            return None;
        }
        let mut fields = BTreeMap::new();
        for &name in *expected {
            let mut below = path.to_vec();
            below.push(name);
            fields.insert(name, Schema::probe(&below));
        }
        Some(Schema { fields })
    }

    fn field(&self, name: &str) -> Option<&Option<Schema>> {
        self.fields.get(name)
    }

    /// The top-level names: the first segment of every configuration variable.
    fn tables(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.fields.keys().copied()
    }

    /// The key path that `flat` spells with single underscores between keys
    /// (`services_wsman_bind` -> `services`, `wsman`, `bind`), if one does.
    fn path_of(&self, flat: &str) -> Option<Vec<String>> {
        for (name, below) in &self.fields {
            if flat == *name {
                return Some(vec![(*name).to_owned()]);
            }
            if let (Some(rest), Some(table)) = (
                flat.strip_prefix(name).and_then(|r| r.strip_prefix('_')),
                below,
            ) && let Some(mut path) = table.path_of(rest)
            {
                path.insert(0, (*name).to_owned());
                return Some(path);
            }
        }
        None
    }
}

/// Parse one variable's value like figment's `Env` provider: `true`/`false`, numbers (a float
/// only with a `.`), `"quoted strings"` with TOML escapes, `'c'` characters, `[arrays]` and
/// `{key=value}` tables of those, and bare words; anything else, or anything nested deeper
/// than 32 levels, is the whole text as a string. Unlike figment's, it unescapes a quoted
/// string with non-ASCII characters correctly instead of panicking.
pub fn parse_value(text: &str) -> Value {
    let mut parser = ValueParser {
        text,
        pos: 0,
        depth: 0,
    };
    match parser.value() {
        Some(value) if parser.pos == text.len() => value,
        _ => Value::from(text.to_owned()),
    }
}

struct ValueParser<'a> {
    text: &'a str,
    /// A byte offset, always on a character boundary.
    pos: usize,
    depth: usize,
}

impl ValueParser<'_> {
    fn rest(&self) -> &str {
        self.text.get(self.pos..).unwrap_or_default()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn eat(&mut self, expected: char) -> Option<()> {
        (self.peek()? == expected).then(|| self.pos += expected.len_utf8())
    }

    fn eat_any(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn take_while(&mut self, mut keep: impl FnMut(char) -> bool) -> &str {
        let start = self.pos;
        let len = self
            .rest()
            .char_indices()
            .find(|&(_, c)| !keep(c))
            .map_or(self.rest().len(), |(i, _)| i);
        self.pos += len;
        self.text.get(start..self.pos).unwrap_or_default()
    }

    fn skip_whitespace(&mut self) {
        self.take_while(|c| c.is_ascii_whitespace());
    }

    fn value(&mut self) -> Option<Value> {
        self.skip_whitespace();
        let value = if self.rest().starts_with("true") {
            self.pos += 4;
            Value::from(true)
        } else if self.rest().starts_with("false") {
            self.pos += 5;
            Value::from(false)
        } else {
            match self.peek() {
                Some('{') => Value::from(self.nested(Self::dict)?),
                Some('[') => Value::from(self.nested(Self::array)?),
                Some('"') => Value::from(self.string()?),
                Some('\'') => {
                    self.eat('\'')?;
                    let c = self.eat_any()?;
                    self.eat('\'')?;
                    Value::from(c)
                }
                _ => bare(
                    self.take_while(|c| !matches!(c, ',' | '{' | '}' | '[' | ']'))
                        .trim(),
                ),
            }
        };
        self.skip_whitespace();
        Some(value)
    }

    fn nested<T>(&mut self, parse: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let parsed = parse(self);
        self.depth -= 1;
        parsed
    }

    /// `[a, b, ...]`, a trailing comma allowed; the closing bracket must follow the opening
    /// one or a comma directly for the array to end there (`[ ]` is one empty string, as in
    /// figment).
    fn array(&mut self) -> Option<Vec<Value>> {
        self.eat('[')?;
        let mut items = Vec::new();
        loop {
            if self.eat(']').is_some() {
                break;
            }
            items.push(self.value()?);
            if self.eat(',').is_none() {
                self.eat(']')?;
                break;
            }
        }
        Some(items)
    }

    fn dict(&mut self) -> Option<Dict> {
        self.eat('{')?;
        let mut dict = Dict::new();
        loop {
            if self.eat('}').is_some() {
                break;
            }
            self.skip_whitespace();
            let key = match self.peek()? {
                '"' => self.string()?,
                _ => {
                    let key =
                        self.take_while(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if key.is_empty() {
                        return None;
                    }
                    key.to_owned()
                }
            };
            self.skip_whitespace();
            self.eat('=')?;
            let value = self.value()?;
            dict.insert(key, value);
            if self.eat(',').is_none() {
                self.eat('}')?;
                break;
            }
        }
        Some(dict)
    }

    /// `"..."`: up to the first unescaped quote, then TOML's basic-string escapes.
    fn string(&mut self) -> Option<String> {
        self.eat('"')?;
        let mut escaped = false;
        let inner = self.take_while(|c| {
            if escaped {
                escaped = false;
                return true;
            }
            if c == '\\' {
                escaped = true;
                return true;
            }
            c != '"'
        });
        let unescaped = unescape(inner)?;
        self.eat('"')?;
        Some(unescaped)
    }
}

/// A bare word: a float if it has a `.` and parses as one, else an unsigned or signed integer,
/// else the word itself.
fn bare(word: &str) -> Value {
    if word.contains('.')
        && let Ok(float) = word.parse::<f64>()
    {
        return Value::from(float);
    }
    if let Ok(int) = word.parse::<usize>() {
        Value::from(int)
    } else if let Ok(int) = word.parse::<isize>() {
        Value::from(int)
    } else {
        Value::from(word.to_owned())
    }
}

/// TOML basic-string escapes (`\" \\ \b \f \n \r \t \uXXXX \UXXXXXXXX`); control characters
/// other than tab are refused, as in figment.
fn unescape(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                u @ ('u' | 'U') => {
                    let len = if u == 'u' { 4 } else { 8 };
                    let mut code = 0u32;
                    for _ in 0..len {
                        let digit = chars.next()?;
                        if !digit.is_ascii_hexdigit() {
                            return None;
                        }
                        code = code * 16 + digit.to_digit(16)?;
                    }
                    out.push(char::from_u32(code)?);
                }
                _ => return None,
            },
            '\t' | '\u{20}'..='\u{7e}' | '\u{80}'..='\u{10ffff}' => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Environment {
        Environment::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn the_first_absolute_state_directory_is_where_the_default_pin_store_goes() {
        let state = |value: &str| env(&[("STATE_DIRECTORY", value)]).state_directory.clone();
        assert_eq!(
            state("/var/lib/amtgw:/var/lib/other"),
            Some(PathBuf::from("/var/lib/amtgw"))
        );
        assert_eq!(state("relative/dir"), None);
        assert_eq!(state(""), None);
        assert_eq!(env(&[]).state_directory, None);

        let text = "[[devices]]\nname = \"a\"\nhost = \"192.0.2.1\"\ntrust = \"tofu\"\n";
        let base = Path::new("/etc/amtgw");
        let pin_store = |env: &Environment| {
            crate::Config::from_toml_with_env("test.toml", base, text, env)
                .map(|config| config.gateway.pin_store)
        };
        assert!(matches!(
            pin_store(&env(&[("STATE_DIRECTORY", "/var/lib/amtgw")])),
            Ok(crate::tls::PinStoreSettings::File(path))
                if path == Path::new("/var/lib/amtgw/amtgw-pins.toml")
        ));
        assert!(matches!(
            pin_store(&env(&[])),
            Ok(crate::tls::PinStoreSettings::File(path))
                if path == Path::new("/etc/amtgw/amtgw-pins.toml")
        ));
        // An explicit pin store stays where the config puts it, relative to the config file.
        let explicit = format!("[gateway]\npin_store = \"pins.toml\"\n{text}");
        assert!(matches!(
            crate::Config::from_toml_with_env(
                "test.toml",
                base,
                &explicit,
                &env(&[("STATE_DIRECTORY", "/var/lib/amtgw")])
            )
            .map(|config| config.gateway.pin_store),
            Ok(crate::tls::PinStoreSettings::File(path))
                if path == Path::new("/etc/amtgw/pins.toml")
        ));
    }

    #[test]
    fn schema_is_read_from_the_serde_shapes() {
        let tables: Vec<&str> = SCHEMA.tables().collect();
        assert_eq!(
            tables,
            [
                "admin", "defaults", "devices", "gateway", "metrics", "ranges", "services"
            ]
        );
        let gateway = SCHEMA.field("gateway").unwrap().as_ref().unwrap();
        assert!(matches!(gateway.field("max_connections"), Some(None)));
        // Arrays are set whole, so `devices` is a value here, not a table.
        assert!(matches!(SCHEMA.field("devices"), Some(None)));
        assert_eq!(
            SCHEMA.path_of("services_wsman_bind").unwrap(),
            ["services", "wsman", "bind"]
        );
    }

    #[test]
    fn table_variables_are_configuration() {
        let env = env(&[
            ("AMTGW_GATEWAY__MAX_CONNECTIONS", "5000"),
            ("AMTGW_SERVICES__WSMAN__BIND", r#"["0.0.0.0"]"#),
            ("AMTGW_CONFIG", "/etc/amtgw/amtgw.toml"),
            ("PATH", "/usr/bin"),
        ]);
        let names: Vec<&str> = env.overrides().collect();
        assert_eq!(
            names,
            [
                "AMTGW_GATEWAY__MAX_CONNECTIONS",
                "AMTGW_SERVICES__WSMAN__BIND"
            ]
        );
        assert!(env.ignored().is_empty());
        let data = env.data().unwrap();
        let dict = &data[&Profile::Default];
        assert_eq!(
            dict["gateway"].find_ref("max_connections"),
            Some(&Value::from(5000usize))
        );
    }

    #[test]
    fn near_misses_are_ignored_with_a_warning_naming_the_meant_variable() {
        let env = env(&[
            ("AMTGW_GATWAY__MAX_CONNECTIONS", "5"),
            ("AMTGW_GATEWAY_MAX_CONNECTIONS", "5"),
            ("AMTGW_SERVICES_WSMAN__BIND", "[]"),
        ]);
        assert_eq!(env.overrides().count(), 0);
        let warnings = env.warnings().join("\n");
        assert_eq!(env.warnings().len(), 3, "{warnings}");
        assert!(
            warnings.contains(
                "AMTGW_GATWAY__MAX_CONNECTIONS is not configuration and is ignored; \
                 did you mean AMTGW_GATEWAY__MAX_CONNECTIONS?"
            ),
            "{warnings}"
        );
        assert!(
            warnings.contains(
                "AMTGW_GATEWAY_MAX_CONNECTIONS is not configuration and is ignored; \
                 did you mean AMTGW_GATEWAY__MAX_CONNECTIONS?"
            ),
            "{warnings}"
        );
        assert!(
            warnings.contains("did you mean AMTGW_SERVICES__WSMAN__BIND?"),
            "{warnings}"
        );
    }

    #[test]
    fn an_empty_key_segment_is_a_problem() {
        let env = env(&[("AMTGW_GATEWAY____WORKERS", "2")]);
        let problem = env.problem().unwrap();
        assert_eq!(problem.key, "gateway");
        assert!(
            problem.message.contains("AMTGW_GATEWAY____WORKERS"),
            "{problem:?}"
        );
    }

    #[test]
    fn values_parse_like_figment() {
        // figment's own test table, plus its quirks; ASCII only, where figment is correct.
        let cases = [
            "true",
            "false",
            "\"false\"",
            "  false  ",
            "1",
            " -0",
            " -2",
            " 123 ",
            "\"a\"",
            "   a ",
            "\" a  \"",
            "1.2",
            "3.14159",
            "\"abc\\td\\n\"",
            "\"\\\"hi\\\"\"",
            "\"hi\\u1234there\"",
            "\"\\\\\"",
            "\"\\\"",
            "[1,2,3]",
            "{a=b}",
            "{\"a.b.c\"=b}",
            "{a=1,b=hi}",
            "[1,[2],3]",
            "{a=[[-2]],b=\" hi\"}",
            "[1,true,hi,\"a \"]",
            "[[ -1], {a=[ b ]},  hi ]",
            "[]",
            "[ ]",
            "[,]",
            "[1,2,]",
            "{}",
            "{ }",
            "{a=1,}",
            "'x'",
            "'xy'",
            "trueish",
            "10s",
            "[0.0.0.0]",
            "1.5.0",
            "+5",
            "a,b",
            "\"unterminated",
            "\"bad\\q\"",
            "\"\\u00e9\"",
            "\"\\UFFFFFFFF\"",
            "[\"0.0.0.0\", \"::1\"]",
            "",
            " ",
        ];
        for case in cases {
            let figment: Value = case.parse().unwrap();
            assert_eq!(parse_value(case), figment, "{case:?}");
        }
    }

    #[test]
    fn a_backslash_after_a_non_ascii_character_does_not_panic() {
        // figment's unescaping slices at a character index: this panicked, and `"éa\t"`
        // silently lost the `a`.
        assert_eq!(parse_value("\"é\\t\""), Value::from("é\t".to_owned()));
        assert_eq!(parse_value("\"éa\\t\""), Value::from("éa\t".to_owned()));
        assert_eq!(
            parse_value("[\"ü\\\\\"]"),
            Value::from(vec![Value::from("ü\\".to_owned())])
        );
    }

    #[test]
    fn deep_nesting_is_a_string_not_a_stack_overflow() {
        let deep = "[".repeat(100_000);
        assert_eq!(parse_value(&deep), Value::from(deep.clone()));
        let ok = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(matches!(parse_value(&ok), Value::Array(..)));
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("gatway", "gateway", 2), 1);
        assert_eq!(edit_distance("gateway", "gateway", 2), 0);
        assert_eq!(edit_distance("servces", "services", 2), 1);
        assert!(edit_distance("service_host", "services", 2) > 2);
    }
}
