//! The instruction files (`prompts/*.txt`): their plain-text format, the built-in wording,
//! and loading the operator's edited copies.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{ExpandKind, I2V_PROMPT_FILE, T2V_PROMPT_FILE};

const BUILTIN_T2V: &str = include_str!("../../prompts/expand_t2v.txt");
const BUILTIN_I2V: &str = include_str!("../../prompts/expand_i2v.txt");

/// One instruction: the system text and example (user, assistant) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTemplate {
    pub system: String,
    pub examples: Vec<(String, String)>,
}

impl PromptTemplate {
    /// Parses the plain-text format of `prompts/*.txt`: sections opened by a line `[system]`,
    /// `[user]` or `[assistant]`; `#` lines are comments; one system section first, then
    /// user/assistant pairs.
    pub fn parse(text: &str) -> Result<Self> {
        let mut sections: Vec<(String, String)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') {
                continue;
            }
            if let Some(role) = trimmed.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                match role {
                    "system" | "user" | "assistant" => {
                        sections.push((role.to_string(), String::new()));
                        continue;
                    }
                    _ => bail!("line {}: unknown section [{role}]", n + 1),
                }
            }
            match sections.last_mut() {
                Some((_, body)) => {
                    body.push_str(trimmed);
                    body.push('\n');
                }
                None if trimmed.is_empty() => {}
                None => bail!("line {}: text before the [system] section", n + 1),
            }
        }
        // Line breaks inside a section are only for editing comfort.
        let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut iter = sections.into_iter();
        let system = match iter.next() {
            Some((role, body)) if role == "system" => flat(&body),
            _ => bail!("the file must start with a [system] section"),
        };
        if system.is_empty() {
            bail!("the [system] section is empty");
        }
        let mut examples = Vec::new();
        while let Some((role, user)) = iter.next() {
            if role != "user" {
                bail!("expected [user] after an example, found [{role}]");
            }
            let assistant = match iter.next() {
                Some((role, body)) if role == "assistant" => body,
                _ => bail!("every [user] example needs an [assistant] answer after it"),
            };
            let (user, assistant) = (flat(&user), flat(&assistant));
            if user.is_empty() || assistant.is_empty() {
                bail!("an example has an empty [user] or [assistant] section");
            }
            examples.push((user, assistant));
        }
        Ok(PromptTemplate { system, examples })
    }
}

/// The instructions for both kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandPrompts {
    pub t2v: PromptTemplate,
    pub i2v: PromptTemplate,
}

impl ExpandPrompts {
    /// The wording shipped in `prompts/`, compiled in.
    pub fn builtin() -> Self {
        // Covered by a unit test, so this cannot fail in a built binary.
        ExpandPrompts {
            t2v: PromptTemplate::parse(BUILTIN_T2V).expect("built-in expand_t2v.txt parses"),
            i2v: PromptTemplate::parse(BUILTIN_I2V).expect("built-in expand_i2v.txt parses"),
        }
    }

    /// Loads from `dir`, each missing file (or a missing dir) falling back to the built-in
    /// one. A file that exists but does not parse is an error: the operator edited it and
    /// should hear about it at start, not get silently different wording.
    pub fn load(dir: Option<&Path>) -> Result<Self> {
        let one = |name: &str, builtin: &str| -> Result<PromptTemplate> {
            if let Some(dir) = dir {
                let path = dir.join(name);
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        return PromptTemplate::parse(&text)
                            .with_context(|| format!("parsing {}", path.display()))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        tracing::info!(path = %path.display(), "prompt file not found; using the built-in one");
                    }
                    Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
                }
            }
            PromptTemplate::parse(builtin)
        };
        Ok(ExpandPrompts {
            t2v: one(T2V_PROMPT_FILE, BUILTIN_T2V)?,
            i2v: one(I2V_PROMPT_FILE, BUILTIN_I2V)?,
        })
    }

    pub fn for_kind(&self, kind: ExpandKind) -> &PromptTemplate {
        match kind {
            ExpandKind::TextToVideo => &self.t2v,
            ExpandKind::ImageToVideo => &self.i2v,
        }
    }
}
