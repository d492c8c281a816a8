//! Diagnosis from what PHP (PHP-FPM) writes to FastCGI stderr.
//!
//! PHP-FPM forwards `log_errors` output and its own refusals over the FastCGI
//! STDERR stream, e.g. `PHP message: PHP Fatal error:  Allowed memory size of
//! 33554432 bytes exhausted (tried to allocate 4096 bytes) in /srv/x.php on
//! line 5`, `Primary script unknown`, or `Access to the script '/x.jpg' has
//! been denied (see security.limit_extensions)`.

use crate::cause::Cause;

/// A cause found in stderr text, with the message line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StderrDiagnosis {
    pub cause: Cause,
    /// The message (one line), e.g. `PHP Fatal error:  Uncaught Exception: boom in /x.php:3`.
    pub message: String,
    /// `file:line` when PHP named one.
    pub location: Option<String>,
}

/// How specific a cause is: a more specific one wins over a generic fatal.
fn rank(c: Cause) -> u8 {
    match c {
        Cause::AppFatalError => 1,
        _ => 2,
    }
}

/// Classifies stderr text. Returns the most specific diagnosis found.
pub fn classify(text: &str) -> Option<StderrDiagnosis> {
    let mut best: Option<StderrDiagnosis> = None;
    for raw in text.split('\n') {
        let line = raw.trim_end_matches(['\r', ' ', '.']);
        let line = line.strip_prefix("PHP message: ").unwrap_or(line);
        let cause = if line.contains("Allowed memory size of") && line.contains("exhausted") {
            Cause::AppMemoryExhausted
        } else if line.contains("Maximum execution time of") {
            Cause::AppMaxExecutionTime
        } else if line.contains("Primary script unknown") {
            Cause::AppScriptNotFound
        } else if line.contains("has been denied (see security.limit_extensions)") {
            Cause::AppAccessDenied
        } else if line.contains("PHP Fatal error:") || line.contains("PHP Parse error:") {
            Cause::AppFatalError
        } else {
            continue;
        };
        if best.as_ref().is_some_and(|b| rank(b.cause) >= rank(cause)) {
            continue;
        }
        best = Some(StderrDiagnosis {
            cause,
            message: line.chars().take(400).collect(),
            location: location_of(line),
        });
    }
    best
}

/// Extracts `file:line` from `... in /x.php on line 5` or `... in /x.php:5`.
fn location_of(line: &str) -> Option<String> {
    if let Some(i) = line.rfind(" in /") {
        let rest = &line[i + 4..];
        if let Some((file, l)) = rest.split_once(" on line ") {
            let n: String = l.chars().take_while(char::is_ascii_digit).collect();
            if !n.is_empty() {
                return Some(format!("{file}:{n}"));
            }
        }
        let cand: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
        if let Some((file, n)) = cand.rsplit_once(':') {
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                return Some(format!("{file}:{n}"));
            }
        }
    }
    None
}

/// nginx trims trailing CR, LF, '.' and space from stderr before logging it.
pub fn nginx_trim(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n', '.', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_php_messages() {
        let d = classify("PHP message: PHP Fatal error:  Allowed memory size of 33554432 bytes exhausted (tried to allocate 20480 bytes) in /srv/www/memory.php on line 7").expect("d");
        assert_eq!(d.cause, Cause::AppMemoryExhausted);
        assert_eq!(d.location.as_deref(), Some("/srv/www/memory.php:7"));

        let d = classify("PHP message: PHP Warning:  foo in /a.php on line 2\nPHP message: PHP Fatal error:  Maximum execution time of 1 second exceeded in /srv/t.php on line 4").expect("d");
        assert_eq!(d.cause, Cause::AppMaxExecutionTime);

        let d = classify("PHP message: PHP Fatal error:  Uncaught Exception: boom in /srv/f.php:3\nStack trace:\n#0 {main}\n  thrown in /srv/f.php on line 3").expect("d");
        assert_eq!(d.cause, Cause::AppFatalError);
        assert_eq!(d.location.as_deref(), Some("/srv/f.php:3"));

        assert_eq!(
            classify("Primary script unknown").map(|d| d.cause),
            Some(Cause::AppScriptNotFound)
        );
        assert_eq!(
            classify("Access to the script '/srv/up/x.jpg' has been denied (see security.limit_extensions)").map(|d| d.cause),
            Some(Cause::AppAccessDenied)
        );
        assert_eq!(
            classify("PHP message: PHP Warning:  Undefined variable $x in /a.php on line 2"),
            None
        );
    }
}
