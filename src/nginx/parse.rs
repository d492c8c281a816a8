//! Directive tree builder and `include` expansion — the syntax half of
//! nginx's `ngx_conf_parse()` / `ngx_conf_include()`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::lexer::{Lexer, Token, Word};
use super::{Arg, ConfError, Directive};

/// Directives that nginx only accepts with a `{ ... }` block.  A `;` after
/// one of them is reported like nginx does (`directive "x" has no opening
/// "{"`).  Not checked inside blocks whose entries are data rather than
/// directives (`map`, `types`, ...), and `server` is allowed without a block
/// inside `upstream`.
const BLOCK_ONLY: &[&str] = &[
    "http",
    "events",
    "server",
    "location",
    "if",
    "limit_except",
    "upstream",
    "map",
    "geo",
    "types",
    "split_clients",
    "stream",
    "mail",
    "charset_map",
];

/// Blocks whose entries are arbitrary words handled by a custom nginx
/// handler (`cf->handler`), not directives.
const DATA_BLOCKS: &[&str] = &["map", "geo", "types", "split_clients", "charset_map"];

struct Ctx {
    include_base: PathBuf,
    /// Canonical paths of the files currently being parsed (include stack).
    stack: Vec<PathBuf>,
}

pub(crate) fn parse_file(path: &Path) -> Result<Vec<Directive>, ConfError> {
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let data = std::fs::read(path).map_err(|e| ConfError {
        file: path.to_path_buf(),
        line: 0,
        message: open_failed(path, &e),
    })?;
    let mut ctx = Ctx {
        include_base: base,
        stack: Vec::new(),
    };
    if let Ok(c) = std::fs::canonicalize(path) {
        ctx.stack.push(c);
    }
    parse_bytes(&mut ctx, &data, Arc::new(path.to_path_buf()))
}

pub(crate) fn parse_str(
    text: &str,
    file: &Path,
    include_base: &Path,
) -> Result<Vec<Directive>, ConfError> {
    let mut ctx = Ctx {
        include_base: include_base.to_path_buf(),
        stack: Vec::new(),
    };
    if let Ok(c) = std::fs::canonicalize(file) {
        ctx.stack.push(c);
    }
    parse_bytes(&mut ctx, text.as_bytes(), Arc::new(file.to_path_buf()))
}

/// nginx's wording for a failed open, e.g.
/// `open() "/etc/nginx/x.conf" failed (2: No such file or directory)`.
fn open_failed(path: &Path, e: &std::io::Error) -> String {
    let text = e.to_string();
    // io::Error renders as "No such file or directory (os error 2)".
    let text = match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    match e.raw_os_error() {
        Some(n) => format!("open() \"{}\" failed ({}: {})", path.display(), n, text),
        None => format!("open() \"{}\" failed ({})", path.display(), text),
    }
}

fn parse_bytes(
    ctx: &mut Ctx,
    data: &[u8],
    file: Arc<PathBuf>,
) -> Result<Vec<Directive>, ConfError> {
    let mut lexer = Lexer::new(data);
    parse_block(ctx, &mut lexer, &file, None)
}

fn to_arg(w: Word) -> Arg {
    Arg {
        value: w.value,
        quoted: w.quoted,
        line: w.line,
    }
}

/// Parses directives until `}` (when `parent` is a block) or end of file.
/// `parent` is the name of the enclosing block directive, `None` at file
/// level (an included file is always parsed at file level: a `}` in it
/// cannot close the includer's block, exactly as in nginx).
fn parse_block(
    ctx: &mut Ctx,
    lx: &mut Lexer<'_>,
    file: &Arc<PathBuf>,
    parent: Option<&str>,
) -> Result<Vec<Directive>, ConfError> {
    let err = |line: usize, message: String| ConfError {
        file: file.as_ref().clone(),
        line,
        message,
    };
    let mut out = Vec::new();
    loop {
        let tok = lx.next_token().map_err(|e| err(e.line, e.message))?;
        let (words, is_block) = match tok {
            Token::BlockDone => {
                if parent.is_none() {
                    return Err(err(lx.line, "unexpected \"}\"".to_string()));
                }
                return Ok(out);
            }
            Token::Eof => {
                if parent.is_some() {
                    return Err(err(
                        lx.line,
                        "unexpected end of file, expecting \"}\"".to_string(),
                    ));
                }
                return Ok(out);
            }
            Token::Statement(w) => (w, false),
            Token::BlockStart(w) => (w, true),
        };

        let mut words = words.into_iter();
        let name = words
            .next()
            .expect("lexer never returns an empty directive");
        let args: Vec<Arg> = words.map(to_arg).collect();
        let in_data_block = parent.is_some_and(|p| DATA_BLOCKS.contains(&p));

        if name.value == "include" {
            if is_block {
                return Err(err(
                    lx.line,
                    "directive \"include\" is not terminated by \";\"".to_string(),
                ));
            }
            if args.len() != 1 {
                return Err(err(
                    lx.line,
                    "invalid number of arguments in \"include\" directive".to_string(),
                ));
            }
            let included = include(ctx, &args[0].value, file, lx.line)?;
            out.extend(included);
            continue;
        }

        let upstream_server = name.value == "server" && parent == Some("upstream");
        if !is_block
            && !in_data_block
            && !upstream_server
            && BLOCK_ONLY.contains(&name.value.as_str())
        {
            return Err(err(
                lx.line,
                format!("directive \"{}\" has no opening \"{{\"", name.value),
            ));
        }

        let block = if is_block {
            Some(parse_block(ctx, lx, file, Some(name.value.as_str()))?)
        } else {
            None
        };

        out.push(Directive {
            name: name.value,
            args,
            block,
            file: Arc::clone(file),
            line: name.line,
        });
    }
}

/// `ngx_conf_include()`: a pattern containing any of `*?[` is a glob (no
/// match is fine), anything else must be a readable file.  Relative paths
/// are relative to the conf prefix (`ctx.include_base`), never to the
/// including file.
fn include(
    ctx: &mut Ctx,
    pattern: &str,
    from: &Arc<PathBuf>,
    line: usize,
) -> Result<Vec<Directive>, ConfError> {
    let err = |message: String| ConfError {
        file: from.as_ref().clone(),
        line,
        message,
    };
    let full = if pattern.starts_with('/') {
        PathBuf::from(pattern)
    } else {
        ctx.include_base.join(pattern)
    };

    let files: Vec<PathBuf> = if pattern.contains(['*', '?', '[']) {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let full_str = full.to_string_lossy();
        let paths = glob::glob_with(&full_str, opts)
            .map_err(|e| err(format!("glob() \"{}\" failed ({})", full_str, e.msg)))?;
        // glob(3) without GLOB_ERR skips unreadable directories; so do we.
        let mut v: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
        v.sort(); // glob(3) sorts its result (nginx never sets setlocale)
        v
    } else {
        vec![full]
    };

    let mut out = Vec::new();
    for path in files {
        let data = std::fs::read(&path).map_err(|e| err(open_failed(&path, &e)))?;
        let canon = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if let Some(i) = ctx.stack.iter().position(|p| *p == canon) {
            let mut chain: Vec<String> = ctx.stack[i..]
                .iter()
                .map(|p| format!("\"{}\"", p.display()))
                .collect();
            chain.push(format!("\"{}\"", canon.display()));
            return Err(err(format!(
                "include cycle detected: {}",
                chain.join(" -> ")
            )));
        }
        ctx.stack.push(canon);
        let res = parse_bytes(ctx, &data, Arc::new(path));
        ctx.stack.pop();
        out.extend(res?);
    }
    Ok(out)
}
