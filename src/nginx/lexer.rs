//! Tokenizer: a line-for-line port of nginx's `ngx_conf_read_token()`
//! (src/core/ngx_conf_file.c, nginx 1.22 / freenginx).
//!
//! The state machine below deliberately keeps nginx's variable names
//! (`last_space`, `need_space`, `sharp_comment`, `quoted`, `variable`, ...)
//! so the two can be compared side by side.  Notable consequences that the
//! tests pin down:
//!
//! * Unquoted words end only at space, tab, CR, LF, `;` and `{`.  A `}` or
//!   `#` inside a word is part of the word (`a#b`, `a}`); `}` / `#` are only
//!   special at the start of a token.
//! * A backslash anywhere (inside or outside quotes) makes the next byte
//!   ordinary.  After the word is cut, `\"` `\'` `\\` lose the backslash and
//!   `\t` `\r` `\n` become TAB/CR/LF — this happens for *unquoted* words too;
//!   every other `\x` keeps its backslash (so `\.php$` stays `\.php$`).
//! * A `{` directly after `$` does not end a word (`${var}`); anywhere else an
//!   unquoted `{` ends the word and opens a block — `location ~ ^/x{2}$ {`
//!   therefore opens a block after `^/x`.
//! * After a closing quote only whitespace, `;`, `{` or `)` may follow; `)`
//!   then starts a new word (that is how `if ($a = "b")` works).
//! * nginx reads the file through a 4096-byte buffer and rejects a token that
//!   does not fit in it; that is emulated exactly (including the surprising
//!   case of a `#` comment longer than the buffer).

/// nginx's `NGX_CONF_BUFFER`.
pub(crate) const CONF_BUFFER: usize = 4096;

/// One word of a directive, after escape processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Word {
    pub value: String,
    pub quoted: bool,
    pub line: usize,
}

/// What `ngx_conf_read_token()` returns.
#[derive(Debug)]
pub(crate) enum Token {
    /// Words terminated by `;` (`NGX_OK`).
    Statement(Vec<Word>),
    /// Words terminated by `{` (`NGX_CONF_BLOCK_START`).
    BlockStart(Vec<Word>),
    /// A `}` at token start (`NGX_CONF_BLOCK_DONE`).
    BlockDone,
    /// End of input (`NGX_CONF_FILE_DONE`).
    Eof,
}

/// A tokenizer error: the line nginx would report and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LexError {
    pub line: usize,
    pub message: String,
}

pub(crate) struct Lexer<'a> {
    data: &'a [u8],
    /// Next byte to read (`b->pos`, as a file offset).
    pos: usize,
    /// End of the bytes nginx would have in its buffer (`b->last`).
    last: usize,
    /// Current line (`cf->conf_file->line`), 1-based.
    pub line: usize,
}

fn is_space(ch: u8) -> bool {
    ch == b' ' || ch == b'\t' || ch == b'\r' || ch == b'\n'
}

impl<'a> Lexer<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Lexer {
            data,
            pos: 0,
            last: 0,
            line: 1,
        }
    }

    fn err(&self, message: String) -> LexError {
        LexError {
            line: self.line,
            message,
        }
    }

    /// Reads the next directive (or block end / end of file).
    pub fn next_token(&mut self) -> Result<Token, LexError> {
        let mut found = false;
        let mut need_space = false;
        let mut last_space = true;
        let mut sharp_comment = false;
        let mut variable = false;
        let mut quoted = false;
        let mut s_quoted = false;
        let mut d_quoted = false;
        let mut word_quoted = false;

        let mut args: Vec<Word> = Vec::new();
        let mut start = self.pos;
        let mut start_line = self.line;

        loop {
            if self.pos >= self.last {
                if self.last >= self.data.len() {
                    if !args.is_empty() || !last_space {
                        return Err(self
                            .err("unexpected end of file, expecting \";\" or \"}\"".to_string()));
                    }
                    return Ok(Token::Eof);
                }

                // Refill nginx's buffer: it keeps the current token and reads
                // up to NGX_CONF_BUFFER bytes from there.
                let len = self.pos - start;
                if len == CONF_BUFFER {
                    self.line = start_line;
                    let message = if d_quoted || s_quoted {
                        format!(
                            "too long parameter, probably missing terminating \"{}\" character",
                            if d_quoted { '"' } else { '\'' }
                        )
                    } else {
                        let head = &self.data[start..start + 10];
                        format!(
                            "too long parameter \"{}...\" started",
                            String::from_utf8_lossy(head)
                        )
                    };
                    return Err(self.err(message));
                }
                self.last = self.data.len().min(start + CONF_BUFFER);
            }

            let ch = self.data[self.pos];
            self.pos += 1;

            if ch == b'\n' {
                self.line += 1;
                sharp_comment = false;
            }

            if sharp_comment {
                continue;
            }

            if quoted {
                quoted = false;
                continue;
            }

            if need_space {
                if is_space(ch) {
                    last_space = true;
                    need_space = false;
                    continue;
                }
                if ch == b';' {
                    return Ok(Token::Statement(args));
                }
                if ch == b'{' {
                    return Ok(Token::BlockStart(args));
                }
                if ch == b')' {
                    last_space = true;
                    need_space = false;
                    // falls through: `)` starts a new word
                } else {
                    return Err(self.err(format!("unexpected \"{}\"", ch as char)));
                }
            }

            if last_space {
                start = self.pos - 1;
                start_line = self.line;

                if is_space(ch) {
                    continue;
                }

                match ch {
                    b';' | b'{' => {
                        if args.is_empty() {
                            return Err(self.err(format!("unexpected \"{}\"", ch as char)));
                        }
                        if ch == b'{' {
                            return Ok(Token::BlockStart(args));
                        }
                        return Ok(Token::Statement(args));
                    }
                    b'}' => {
                        if !args.is_empty() {
                            return Err(self.err("unexpected \"}\"".to_string()));
                        }
                        return Ok(Token::BlockDone);
                    }
                    b'#' => {
                        sharp_comment = true;
                        continue;
                    }
                    b'\\' => {
                        quoted = true;
                        last_space = false;
                        word_quoted = false;
                        continue;
                    }
                    b'"' => {
                        start += 1;
                        d_quoted = true;
                        last_space = false;
                        word_quoted = true;
                        continue;
                    }
                    b'\'' => {
                        start += 1;
                        s_quoted = true;
                        last_space = false;
                        word_quoted = true;
                        continue;
                    }
                    b'$' => {
                        variable = true;
                        last_space = false;
                        word_quoted = false;
                        continue;
                    }
                    _ => {
                        last_space = false;
                        word_quoted = false;
                    }
                }
            } else {
                if ch == b'{' && variable {
                    continue;
                }

                variable = false;

                if ch == b'\\' {
                    quoted = true;
                    continue;
                }

                if ch == b'$' {
                    variable = true;
                    continue;
                }

                if d_quoted {
                    if ch == b'"' {
                        d_quoted = false;
                        need_space = true;
                        found = true;
                    }
                } else if s_quoted {
                    if ch == b'\'' {
                        s_quoted = false;
                        need_space = true;
                        found = true;
                    }
                } else if is_space(ch) || ch == b';' || ch == b'{' {
                    last_space = true;
                    found = true;
                }

                if found {
                    args.push(Word {
                        value: unescape(self.data, start, self.pos - 1),
                        quoted: word_quoted,
                        line: start_line,
                    });

                    if ch == b';' {
                        return Ok(Token::Statement(args));
                    }
                    if ch == b'{' {
                        return Ok(Token::BlockStart(args));
                    }

                    found = false;
                }
            }
        }
    }
}

/// nginx's word copy loop: `\"` `\'` `\\` drop the backslash, `\t` `\r` `\n`
/// become control characters, any other backslash is kept verbatim.
fn unescape(data: &[u8], start: usize, end: usize) -> String {
    let mut out = Vec::with_capacity(end - start);
    let mut src = start;
    while src < end {
        if data[src] == b'\\' {
            // nginx looks at src[1] even if it is the terminator; so do we.
            match data.get(src + 1) {
                Some(b'"') | Some(b'\'') | Some(b'\\') => src += 1,
                Some(b't') => {
                    out.push(b'\t');
                    src += 2;
                    continue;
                }
                Some(b'r') => {
                    out.push(b'\r');
                    src += 2;
                    continue;
                }
                Some(b'n') => {
                    out.push(b'\n');
                    src += 2;
                    continue;
                }
                _ => {}
            }
        }
        out.push(data[src]);
        src += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}
