//! The LLM prompt expander, an outbound adapter behind the core's
//! [`PromptExpander`](crate::core::PromptExpander) port.
//!
//! Prompt expansion: a member's short idea ("a cat surfing") becomes a concrete video prompt,
//! written by whatever LLM the operator already runs behind an OpenAI-compatible
//! chat-completions endpoint (Ollama, vLLM, llama.cpp's server, OpenAI).
//!
//! Expansion is a nicety, never a reason for a job to fail: every failure becomes
//! [`Expansion::Fallback`], with one line for the member and the cause for the operator's
//! log, and the job runs on the original prompt. The member's text is only ever sent as a
//! user message, so it cannot rewrite the instruction. The reply is cleaned of chat habits
//! (quotes, markdown, "Here is…") and cut to the CLIP text window, because the encoder would
//! silently drop whatever lies past 77 tokens.
//!
//! The instructions and examples live in `prompts/` so operators can tune them without a
//! rebuild; the shipped files are compiled in as defaults.
//!
//! Files: `client` (the HTTP call and the port implementation), `prompts` (the
//! instruction files), `cleaning` (chat habits out, CLIP window fitting), `cache`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

pub use crate::core::fallback_line;

mod cache;
mod cleaning;
mod client;
mod prompts;

pub use client::LlmExpander;
pub use prompts::{ExpandPrompts, PromptTemplate};

/// Largest response body read from the endpoint; a reply is a few hundred bytes, so anything
/// near this is a misconfigured or hostile server and is cut off while streaming.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Default time allowed for the whole request (connect, answer, body).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// File names looked up in the prompts directory.
pub const T2V_PROMPT_FILE: &str = "expand_t2v.txt";
pub const I2V_PROMPT_FILE: &str = "expand_i2v.txt";

/// Which instruction to use: image-to-video prompts describe motion, not a new scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpandKind {
    TextToVideo,
    ImageToVideo,
}

/// What the job should run on. Never an error: a failed expansion is a `Fallback`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expansion {
    /// `text` is cleaned and fits the CLIP window; `original` is the member's prompt as given.
    Expanded { text: String, original: String },
    /// Use the original prompt. `reason_for_user` is one line for the member,
    /// `cause_for_log` the technical cause (already logged with `tracing::warn!`).
    Fallback {
        reason_for_user: String,
        cause_for_log: String,
    },
}

impl Expansion {
    /// Answer for a member who asked for expansion where no endpoint is configured.
    pub fn unavailable() -> Self {
        Expansion::Fallback {
            reason_for_user: fallback_line("is not available here"),
            cause_for_log: "no LLM endpoint configured".to_string(),
        }
    }

    /// The prompt the engine should receive.
    pub fn prompt<'a>(&'a self, original: &'a str) -> &'a str {
        match self {
            Expansion::Expanded { text, .. } => text,
            Expansion::Fallback { .. } => original,
        }
    }
}

/// An API key; its `Debug` never shows the value so configs can be logged freely.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// Reads the key from the environment variable `var`; unset or blank means no key
    /// (local servers such as Ollama need none).
    pub fn from_env(var: &str) -> Option<Self> {
        std::env::var(var)
            .ok()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .map(ApiKey)
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Where and how to call the LLM.
#[derive(Debug, Clone)]
pub struct ExpanderConfig {
    /// API base, e.g. `http://localhost:11434/v1`; `/chat/completions` is appended.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<ApiKey>,
    /// Whole-request limit: connect, answer and body.
    pub timeout: Duration,
    pub temperature: f32,
    pub max_tokens: u32,
    /// Directory holding `expand_t2v.txt` / `expand_i2v.txt`; missing files use the built-in ones.
    pub prompts_dir: Option<PathBuf>,
    /// How long an expansion is reused for an identical (kind, prompt).
    pub cache_ttl: Duration,
    /// Most cached expansions; 0 turns the cache off.
    pub cache_capacity: usize,
}

impl ExpanderConfig {
    /// Defaults for everything but the endpoint and model.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        ExpanderConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            timeout: DEFAULT_TIMEOUT,
            temperature: 0.7,
            // A 77-token CLIP prompt is ~60 words; leave room for a preamble we strip.
            max_tokens: 200,
            prompts_dir: None,
            cache_ttl: Duration::from_secs(600),
            cache_capacity: 256,
        }
    }
}

impl ExpanderConfig {
    /// From the operator's `[llm]` section; `None` when no endpoint is set (expansion off).
    /// Prompts are read from `llm.prompts_dir`, built-in wording for a file that is absent.
    pub fn from_llm_config(config: &crate::config::Config) -> Result<Option<Self>> {
        let llm = &config.llm;
        let Some(base_url) = llm
            .base_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        else {
            return Ok(None);
        };
        let mut cfg = ExpanderConfig::new(base_url, llm.model.clone());
        cfg.api_key = config.llm_api_key()?.map(|k| ApiKey::new(k.expose()));
        cfg.timeout = Duration::from_secs(llm.timeout_s);
        cfg.temperature = llm.temperature as f32;
        cfg.max_tokens = llm.max_tokens;
        cfg.prompts_dir = Some(llm.prompts_dir.clone());
        Ok(Some(cfg))
    }
}

#[cfg(test)]
mod tests;
