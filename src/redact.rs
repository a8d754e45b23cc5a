//! Keeping credentials out of logs. Interaction and webhook tokens travel in URL paths, and
//! serenity, reqwest and hyper print URLs, payloads and error chains at debug and trace level;
//! no single call site can be trusted to leave them out. So every log line passes through
//! [`redact`] on its way to stderr ([`RedactingStderr`]), which masks:
//! - the token segment of `/webhooks/{id}/{token}` and `/interactions/{id}/{token}` URLs;
//! - the value of any `…token`, `api_key` or `password` field (`"token": "…"`, `token="…"`,
//!   `token: Some("…")`);
//! - `Bot …` / `Bearer …` credentials and the user-info part of URLs;
//! - Discord interaction tokens by their fixed prefix;
//! - every secret value registered with [`register_secret`] (the bot token, the LLM key).

use std::borrow::Cow;
use std::io::Write;
use std::sync::{OnceLock, RwLock};

use regex::Regex;

/// What a masked value is replaced with.
pub const MASK: &str = "<redacted>";

/// Shorter values are not registered: masking every `ab` in a log would hide the log.
const MIN_SECRET_LEN: usize = 4;

fn secrets() -> &'static RwLock<Vec<String>> {
    static SECRETS: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Vec::new()))
}

/// Masks `value` wherever it appears in a log line from now on.
pub fn register_secret(value: &str) {
    let value = value.trim();
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    let mut list = secrets().write().unwrap_or_else(|e| e.into_inner());
    if !list.iter().any(|s| s == value) {
        list.push(value.to_string());
        // Longest first, so a secret containing another is masked whole.
        list.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

struct Patterns {
    /// (pattern, replacement) in the order applied.
    rules: Vec<(Regex, &'static str)>,
}

fn patterns() -> &'static Patterns {
    static PATTERNS: OnceLock<Patterns> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        // An ANSI colour code, which the formatter may put between a field name and its value.
        const ANSI: &str = r"(?:\x1b\[[0-9;]*m)*";
        let rule = |re: &str, with: &'static str| (Regex::new(re).expect("static regex"), with);
        Patterns {
            rules: vec![
                rule(
                    r"(?i)(/(?:webhooks|interactions)/[0-9]+/)[^/?#\s\x22'&<>\\]+",
                    "${1}<redacted>",
                ),
                rule(
                    &format!(
                        r#"(?i)([a-z_]*(?:token|api_?key|password)\\?\x22?{ANSI}\s*{ANSI}[:=]{ANSI}\s*(?:Some\()?\\?\x22?)[^\s\x22\\,)}}]+"#
                    ),
                    "${1}<redacted>",
                ),
                rule(
                    r"\b((?:Bot|Bearer) +)[A-Za-z0-9_~+/=\-]*[0-9.][A-Za-z0-9._~+/=\-]*",
                    "${1}<redacted>",
                ),
                rule(r"(://)[^/\s@:]*:[^/\s@]*@", "${1}<redacted>@"),
                rule(r"aW50ZXJhY3Rpb246[A-Za-z0-9._\-]*", "<redacted>"),
            ],
        }
    })
}

/// `line` with every credential masked; borrowed when there was nothing to mask.
pub fn redact(line: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(line);
    {
        let list = secrets().read().unwrap_or_else(|e| e.into_inner());
        for secret in list.iter() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
    }
    for (re, with) in &patterns().rules {
        if let Cow::Owned(s) = re.replace_all(&out, *with) {
            out = Cow::Owned(s);
        }
    }
    out
}

/// A `MakeWriter` for `tracing_subscriber::fmt` that redacts each event before it reaches stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedactingStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        LineBuffer(Vec::new())
    }
}

/// Collects one formatted event and writes it, redacted, when dropped: a pattern is never cut
/// in half by a partial write.
pub struct LineBuffer(Vec<u8>);

impl Write for LineBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.0);
        let _ = std::io::stderr().write_all(redact(&text).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_and_interaction_url_tokens_are_masked() {
        let line = "PATCH https://discord.com/api/v10/webhooks/123/aW50ZXJhY3Rpb246xyz.uvw/messages/@original failed";
        assert_eq!(
            redact(line),
            "PATCH https://discord.com/api/v10/webhooks/123/<redacted>/messages/@original failed"
        );
        let line = "POST http://127.0.0.1:4000/api/v10/interactions/99/tok99/callback";
        assert_eq!(
            redact(line),
            "POST http://127.0.0.1:4000/api/v10/interactions/99/<redacted>/callback"
        );
    }

    #[test]
    fn token_fields_in_every_shape_are_masked() {
        for (line, kept) in [
            (r#"{"id":"5","token":"tok5","type":2}"#, r#""type":2"#),
            (
                r#"Interaction { id: 5, token: "tok5", kind: 2 }"#,
                "kind: 2",
            ),
            ("token=tok5 step=3", "step=3"),
            ("interaction_token=Some(\"tok5\")", "interaction_token"),
            ("token:\x1b[0m \"tok5\"", "token"),
            (r#"payload: "{\"token\":\"tok5\"}""#, "payload"),
            ("api_key=tok5 model=m", "model=m"),
            (r#"{"password":"tok5"}"#, "password"),
        ] {
            let out = redact(line);
            assert!(!out.contains("tok5"), "{line} -> {out}");
            assert!(out.contains(MASK) && out.contains(kept), "{line} -> {out}");
        }
        // Words that merely contain "token" are left alone.
        assert_eq!(
            redact("max_tokens=200 tokens: 77"),
            "max_tokens=200 tokens: 77"
        );
    }

    #[test]
    fn credentials_and_registered_secrets_are_masked() {
        assert_eq!(
            redact("authorization: Bot MTIz.abc-def_ghi"),
            "authorization: Bot <redacted>"
        );
        assert_eq!(
            redact("base https://user:sk-live@llm.example/v1"),
            "base https://<redacted>@llm.example/v1"
        );
        register_secret("sk-unit-test-secret-42");
        register_secret("ab");
        assert_eq!(
            redact("key sk-unit-test-secret-42 and ab"),
            "key <redacted> and ab"
        );
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
    }
}
