//! Reader for nginx configuration files.
//!
//! why502 can start from an existing nginx setup (typically Debian's
//! `/etc/nginx/nginx.conf` with a PHP-FPM site in `sites-enabled/`).  This
//! module is the first stage of that: it turns nginx's *syntax* into a tree
//! of [`Directive`]s, each carrying the file and line it came from, with every
//! `include` expanded in place.  It knows nothing about what the directives
//! mean — deciding which ones why502 supports, checking contexts and
//! expanding variables at request time are later stages.
//!
//! The tokenizer is a faithful port of nginx's `ngx_conf_read_token()`
//! (see `lexer.rs` for the quirks that implies), so a file nginx accepts
//! parses here into the same words, and a file nginx rejects for syntax
//! fails here with nginx's message and line, e.g.
//! `/etc/nginx/sites-enabled/x:12: unexpected "}"`.
//!
//! * [`parse_file`] / [`parse_str`] — read a config into a directive tree.
//! * [`walk`] — iterate over every directive with its enclosing blocks.
//! * [`convert`] — give the tree its meaning: the internal [`crate::config::Config`].
//! * [`expand_vars`] — split a value such as `$uri/index.php?$args` into
//!   literal and variable pieces the way nginx's script compiler does.

pub mod convert;
#[cfg(test)]
mod convert_tests;
pub mod emit;
mod lexer;
mod parse;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One directive: `name args... ;` or `name args... { block }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<Arg>,
    /// `Some` for block directives (`server { ... }`), even when empty.
    pub block: Option<Vec<Directive>>,
    /// The file the directive was read from (shared by all its directives).
    pub file: Arc<PathBuf>,
    /// 1-based line of the directive's name.
    pub line: usize,
}

/// One argument of a directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    /// The word after removing quotes and processing escapes exactly as
    /// nginx does (`\"` `\'` `\\` `\t` `\r` `\n`; other backslashes are kept,
    /// so the regex `\.php$` stays `\.php$`).  `$variables` are untouched.
    pub value: String,
    /// The word was written in single or double quotes.
    pub quoted: bool,
    /// 1-based line where the word starts (its opening quote, if quoted).
    pub line: usize,
}

/// A syntax or include error, located like nginx locates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfError {
    pub file: PathBuf,
    /// 1-based line nginx would report; 0 when the file itself could not be read.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

impl std::error::Error for ConfError {}

impl Directive {
    /// The `i`-th argument (0 = first word after the name).
    pub fn arg(&self, i: usize) -> Option<&str> {
        self.args.get(i).map(|a| a.value.as_str())
    }

    /// The directives inside this one's block (empty if it has none).
    pub fn children(&self) -> &[Directive] {
        self.block.as_deref().unwrap_or(&[])
    }
}

/// Parses `path` and everything it includes.
///
/// Relative `include` paths are resolved against the directory of `path`,
/// which is what nginx uses as its conf prefix for `-c path`.  Any file
/// parses, including a lone `sites-enabled` file holding a bare `server {}`:
/// contexts are not checked here.
pub fn parse_file(path: &Path) -> Result<Vec<Directive>, ConfError> {
    parse::parse_file(path)
}

/// Parses `text` as if it were the contents of `file` (used only for
/// locations in errors and directives); relative includes are resolved
/// against `include_base`.
pub fn parse_str(
    text: &str,
    file: &Path,
    include_base: &Path,
) -> Result<Vec<Directive>, ConfError> {
    parse::parse_str(text, file, include_base)
}

/// One step of [`walk`].
#[derive(Debug, Clone)]
pub struct Walked<'a> {
    /// Enclosing block directives, outermost first (`http`, `server`, ...).
    pub parents: Vec<&'a Directive>,
    pub directive: &'a Directive,
}

impl<'a> Walked<'a> {
    /// Names of the enclosing blocks, e.g. `["http", "server", "location"]`.
    pub fn path(&self) -> Vec<&'a str> {
        self.parents.iter().map(|d| d.name.as_str()).collect()
    }
}

/// Depth-first, document-order iterator over all directives; see [`walk`].
pub struct Walk<'a> {
    stack: Vec<std::slice::Iter<'a, Directive>>,
    parents: Vec<&'a Directive>,
}

impl<'a> Iterator for Walk<'a> {
    type Item = Walked<'a>;

    fn next(&mut self) -> Option<Walked<'a>> {
        loop {
            let top = self.stack.last_mut()?;
            match top.next() {
                Some(d) => {
                    let item = Walked {
                        parents: self.parents.clone(),
                        directive: d,
                    };
                    if let Some(block) = &d.block {
                        self.stack.push(block.iter());
                        self.parents.push(d);
                    }
                    return Some(item);
                }
                None => {
                    self.stack.pop();
                    self.parents.pop();
                }
            }
        }
    }
}

/// Visits every directive (a block directive before its contents) together
/// with its enclosing blocks.
pub fn walk(directives: &[Directive]) -> Walk<'_> {
    Walk {
        stack: vec![directives.iter()],
        parents: Vec::new(),
    }
}

/// A piece of a value containing variables; see [`expand_vars`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarPiece {
    /// Literal text.
    Lit(String),
    /// A named variable: `$uri`, `${uri}` → `Var("uri")`.  Names are
    /// `[A-Za-z0-9_]+`, so `$0` and `${1}` are *named* variables "0"/"1".
    Var(String),
    /// A regex capture `$1` … `$9` (always a single digit: `$12` is capture
    /// 1 followed by the literal "2").
    Capture(u8),
}

/// Error from [`expand_vars`], with nginx's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarError {
    pub message: String,
}

impl fmt::Display for VarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for VarError {}

/// Splits a directive value into literals, variables and captures exactly as
/// nginx's `ngx_http_script_compile()` does.
///
/// * `$name` — the longest run of `[A-Za-z0-9_]`; `${name}` is the braced form.
/// * `$1`–`$9` — a capture; only one digit is taken.
/// * A `$` at the end, or followed by a character that cannot start a name
///   (`$/`, `$-`, `${}`), is `invalid variable name`; `${name` without the
///   closing brace (or with a non-name character before it) is
///   `the closing bracket in "name" variable is missing`.
///
/// There is no escape for a literal `$` (nginx has none either).  Adjacent
/// literal text is returned as one `Lit`.
pub fn expand_vars(s: &str) -> Result<Vec<VarPiece>, VarError> {
    let b = s.as_bytes();
    let mut out: Vec<VarPiece> = Vec::new();
    let mut i = 0;
    let invalid = || VarError {
        message: "invalid variable name".to_string(),
    };
    while i < b.len() {
        if b[i] == b'$' {
            i += 1;
            if i == b.len() {
                return Err(invalid());
            }
            if (b'1'..=b'9').contains(&b[i]) {
                out.push(VarPiece::Capture(b[i] - b'0'));
                i += 1;
                continue;
            }
            let mut bracket = false;
            if b[i] == b'{' {
                bracket = true;
                i += 1;
                if i == b.len() {
                    return Err(invalid());
                }
            }
            let name_start = i;
            let mut name_end = i;
            while i < b.len() {
                let ch = b[i];
                if ch == b'}' && bracket {
                    i += 1;
                    bracket = false;
                    break;
                }
                if ch.is_ascii_alphanumeric() || ch == b'_' {
                    i += 1;
                    name_end = i;
                    continue;
                }
                break;
            }
            let name = &s[name_start..name_end];
            if bracket {
                return Err(VarError {
                    message: format!("the closing bracket in \"{name}\" variable is missing"),
                });
            }
            if name.is_empty() {
                return Err(invalid());
            }
            out.push(VarPiece::Var(name.to_string()));
            continue;
        }
        let lit_start = i;
        while i < b.len() && b[i] != b'$' {
            i += 1;
        }
        let lit = &s[lit_start..i];
        match out.last_mut() {
            Some(VarPiece::Lit(prev)) => prev.push_str(lit),
            _ => out.push(VarPiece::Lit(lit.to_string())),
        }
    }
    Ok(out)
}
