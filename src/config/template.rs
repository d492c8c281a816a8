//! Strings with nginx variables (`$document_root$fastcgi_script_name`),
//! parsed once at configuration time and evaluated per request.

use std::borrow::Cow;

use bytes::BytesMut;

/// A variable reference. Unknown names are rejected when the config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    Uri,
    RequestUri,
    Args,
    QueryString,
    IsArgs,
    DocumentRoot,
    DocumentUri,
    RealpathRoot,
    FastcgiScriptName,
    FastcgiPathInfo,
    Host,
    Hostname,
    RemoteAddr,
    RemotePort,
    RemoteUser,
    ServerAddr,
    ServerPort,
    ServerName,
    ServerProtocol,
    Scheme,
    Https,
    RequestMethod,
    ContentType,
    ContentLength,
    RequestId,
    NginxVersion,
    /// `$http_NAME` (name lower-case, `_` for `-`).
    Http(String),
    /// `$arg_NAME`.
    Arg(String),
    /// `$cookie_NAME`.
    Cookie(String),
    /// `$1`..`$9` from the last regex match.
    Capture(usize),
    /// Set with `set $name value;` (nginx front end).
    User(String),
}

impl Var {
    /// Resolves a variable name (without `$`).
    pub fn from_name(name: &str) -> Option<Var> {
        use Var::*;
        Some(match name {
            "uri" => Uri,
            "request_uri" => RequestUri,
            "args" => Args,
            "query_string" => QueryString,
            "is_args" => IsArgs,
            "document_root" => DocumentRoot,
            "document_uri" => DocumentUri,
            "realpath_root" => RealpathRoot,
            "fastcgi_script_name" => FastcgiScriptName,
            "fastcgi_path_info" => FastcgiPathInfo,
            "host" => Host,
            "hostname" => Hostname,
            "remote_addr" => RemoteAddr,
            "remote_port" => RemotePort,
            "remote_user" => RemoteUser,
            "server_addr" => ServerAddr,
            "server_port" => ServerPort,
            "server_name" => ServerName,
            "server_protocol" => ServerProtocol,
            "scheme" => Scheme,
            "https" => Https,
            "request_method" => RequestMethod,
            "content_type" => ContentType,
            "content_length" => ContentLength,
            "request_id" => RequestId,
            "nginx_version" => NginxVersion,
            _ => {
                if let Some(h) = name.strip_prefix("http_") {
                    Http(h.to_ascii_lowercase())
                } else if let Some(a) = name.strip_prefix("arg_") {
                    Arg(a.to_string())
                } else if let Some(c) = name.strip_prefix("cookie_") {
                    Cookie(c.to_string())
                } else if let Ok(n) = name.parse::<usize>() {
                    if n > 9 {
                        return None;
                    }
                    Capture(n)
                } else {
                    return None;
                }
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Lit(String),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    pub pieces: Vec<Piece>,
}

/// Supplies variable values for one request.
pub trait Vars {
    fn var(&self, v: &Var) -> Cow<'_, str>;
    /// Appends the variable's value to `out` as bytes (what [`Vars::var`]
    /// gives, without a `String` of its own where the value is made here):
    /// FastCGI params are written this way, straight into the record.
    fn append(&self, v: &Var, out: &mut BytesMut) {
        out.extend_from_slice(self.var(v).as_bytes());
    }
    /// Values may carry bytes that are not UTF-8 (see
    /// [`rawtext`](crate::proxy::rawtext)): a request whose path or
    /// arguments are not UTF-8.
    fn carried(&self) -> bool {
        false
    }
}

impl Template {
    pub fn literal(s: &str) -> Template {
        Template {
            pieces: vec![Piece::Lit(s.to_string())],
        }
    }

    /// Parses `$name` and `${name}` references like nginx's script compiler.
    pub fn parse(s: &str) -> Result<Template, String> {
        Self::parse_with(s, &|_| false)
    }

    /// Like [`Template::parse`], accepting names for which `user` returns true
    /// as user variables (`set $x ...`).
    pub fn parse_with(s: &str, user: &dyn Fn(&str) -> bool) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'$' {
                let start = i;
                while i < b.len() && b[i] != b'$' {
                    i += 1;
                }
                lit.push_str(&s[start..i]);
                continue;
            }
            i += 1;
            let braced = i < b.len() && b[i] == b'{';
            if braced {
                i += 1;
            }
            let start = i;
            if i < b.len() && b[i].is_ascii_digit() {
                // $1..$9: a single digit, like nginx
                i += 1;
            } else {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
            }
            let name = &s[start..i];
            if braced {
                if i >= b.len() || b[i] != b'}' {
                    return Err(format!(
                        "the closing bracket in \"{name}\" variable is missing"
                    ));
                }
                i += 1;
            }
            if name.is_empty() {
                return Err(format!("invalid variable name in \"{s}\""));
            }
            let var = if user(name) {
                Var::User(name.to_string())
            } else {
                Var::from_name(name).ok_or_else(|| format!("unknown \"{name}\" variable"))?
            };
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Var(var));
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template { pieces })
    }

    pub fn is_literal(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Lit(_)))
    }

    /// Like [`Template::eval`], borrowing when the template is one literal
    /// or one variable (most FastCGI params): no allocation per param.
    pub fn eval_cow<'v>(&'v self, vars: &'v dyn Vars) -> Cow<'v, str> {
        match self.pieces.as_slice() {
            [] => Cow::Borrowed(""),
            [Piece::Lit(s)] => Cow::Borrowed(s),
            [Piece::Var(v)] => vars.var(v),
            _ => Cow::Owned(self.eval(vars)),
        }
    }

    /// Appends the value to `out` as bytes (no allocation of its own).
    pub fn eval_into(&self, vars: &dyn Vars, out: &mut BytesMut) {
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Piece::Var(v) => vars.append(v, out),
            }
        }
    }

    /// The text, when the template is one literal.
    pub fn as_literal(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [] => Some(""),
            [Piece::Lit(s)] => Some(s),
            _ => None,
        }
    }

    pub fn eval(&self, vars: &dyn Vars) -> String {
        match self.pieces.as_slice() {
            [] => String::new(),
            [Piece::Lit(s)] => s.clone(),
            [Piece::Var(v)] => vars.var(v).into_owned(),
            pieces => {
                let mut out = String::new();
                for p in pieces {
                    match p {
                        Piece::Lit(s) => out.push_str(s),
                        Piece::Var(v) => out.push_str(&vars.var(v)),
                    }
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct V;
    impl Vars for V {
        fn var(&self, v: &Var) -> Cow<'_, str> {
            Cow::Owned(format!("<{v:?}>"))
        }
    }

    #[test]
    fn parses_like_nginx() {
        let t = Template::parse("$document_root$fastcgi_script_name").expect("ok");
        assert_eq!(t.eval(&V), "<DocumentRoot><FastcgiScriptName>");
        let t = Template::parse("/index.php?${args}x").expect("ok");
        assert_eq!(t.eval(&V), "/index.php?<Args>x");
        let t = Template::parse("$http_x_forwarded_for $arg_page $cookie_sid $1").expect("ok");
        assert_eq!(
            t.eval(&V),
            "<Http(\"x_forwarded_for\")> <Arg(\"page\")> <Cookie(\"sid\")> <Capture(1)>"
        );
        assert!(Template::parse("$nope").is_err());
        assert!(Template::parse("${args").is_err());
        assert!(Template::parse("a$").is_err());
        assert!(Template::parse("plain").expect("ok").is_literal());
    }
}
