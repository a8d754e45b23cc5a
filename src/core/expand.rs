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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::models::tokenizer::{ClipTokenizer, CONTEXT_LENGTH};

/// Largest response body read from the endpoint; a reply is a few hundred bytes, so anything
/// near this is a misconfigured or hostile server and is cut off while streaming.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Default time allowed for the whole request (connect, answer, body).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// File names looked up in the prompts directory.
pub const T2V_PROMPT_FILE: &str = "expand_t2v.txt";
pub const I2V_PROMPT_FILE: &str = "expand_i2v.txt";

const BUILTIN_T2V: &str = include_str!("../../prompts/expand_t2v.txt");
const BUILTIN_I2V: &str = include_str!("../../prompts/expand_i2v.txt");

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

/// The one line a member sees when expansion falls back, e.g. `fallback_line("timed out")`:
/// every reason (here and in the job service) reads as the same kind of full sentence.
pub fn fallback_line(why: &str) -> String {
    format!("Prompt expansion {why}; your prompt was used as written.")
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

    fn expose(&self) -> &str {
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

/// Calls the endpoint, cleans the answer, caches it. Build one per process and share it.
pub struct LlmExpander {
    client: reqwest::Client,
    endpoint: String,
    config: ExpanderConfig,
    prompts: ExpandPrompts,
    tokenizer: Arc<ClipTokenizer>,
    cache: Mutex<ExpansionCache>,
}

impl std::fmt::Debug for LlmExpander {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmExpander")
            .field("endpoint", &self.endpoint)
            .field("model", &self.config.model)
            .finish_non_exhaustive()
    }
}

impl LlmExpander {
    /// Loads the prompts from `config.prompts_dir` (built-in wording where absent).
    pub fn new(config: ExpanderConfig, tokenizer: Arc<ClipTokenizer>) -> Result<Self> {
        let prompts = ExpandPrompts::load(config.prompts_dir.as_deref())?;
        Self::with_prompts(config, prompts, tokenizer)
    }

    pub fn with_prompts(
        config: ExpanderConfig,
        prompts: ExpandPrompts,
        tokenizer: Arc<ClipTokenizer>,
    ) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // An API endpoint has no business redirecting; not following keeps the key
            // from travelling anywhere else.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("floor33/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client for prompt expansion")?;
        let endpoint = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        let cache = Mutex::new(ExpansionCache::new(config.cache_ttl, config.cache_capacity));
        Ok(LlmExpander {
            client,
            endpoint,
            config,
            prompts,
            tokenizer,
            cache,
        })
    }

    pub fn config(&self) -> &ExpanderConfig {
        &self.config
    }

    /// Expands `prompt`; never fails (see [`Expansion`]).
    pub async fn expand(&self, prompt: &str, kind: ExpandKind) -> Expansion {
        let key = prompt.trim();
        let result = if key.is_empty() {
            Err(ExpandError::EmptyPrompt)
        } else if let Some(text) = self.cache_get(kind, key) {
            tracing::debug!(?kind, "prompt expansion served from cache");
            Ok(text)
        } else {
            let result = self.call(key, kind).await.and_then(|r| self.finish(&r));
            if let Ok(text) = &result {
                self.cache_put(kind, key, text);
            }
            result
        };
        match result {
            Ok(text) => Expansion::Expanded {
                text,
                original: prompt.to_string(),
            },
            Err(e) => {
                let cause = e.to_string();
                tracing::warn!(?kind, endpoint = %self.endpoint, cause = %cause,
                    "prompt expansion failed; using the original prompt");
                Expansion::Fallback {
                    reason_for_user: e.reason_for_user(),
                    cause_for_log: cause,
                }
            }
        }
    }

    fn cache_get(&self, kind: ExpandKind, prompt: &str) -> Option<String> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(kind, prompt, Instant::now())
    }

    fn cache_put(&self, kind: ExpandKind, prompt: &str, text: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.put(kind, prompt, text, Instant::now());
    }

    /// The chat request: system instruction, examples as earlier turns, then the member's
    /// text as the last user message and nowhere else.
    fn request_body<'a>(&'a self, prompt: &'a str, kind: ExpandKind) -> ChatRequest<'a> {
        let template = self.prompts.for_kind(kind);
        let mut messages = vec![ChatMessage {
            role: "system",
            content: &template.system,
        }];
        for (user, assistant) in &template.examples {
            messages.push(ChatMessage {
                role: "user",
                content: user,
            });
            messages.push(ChatMessage {
                role: "assistant",
                content: assistant,
            });
        }
        messages.push(ChatMessage {
            role: "user",
            content: prompt,
        });
        ChatRequest {
            model: &self.config.model,
            messages,
            temperature: self.config.temperature,
            max_tokens: self.config.max_tokens,
            stream: false,
        }
    }

    /// POSTs the request and returns the first choice's raw text.
    async fn call(&self, prompt: &str, kind: ExpandKind) -> Result<String, ExpandError> {
        let mut request = self
            .client
            .post(&self.endpoint)
            .json(&self.request_body(prompt, kind));
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key.expose());
        }
        let exchange = async {
            let mut response = request.send().await.map_err(ExpandError::from_http)?;
            let status = response.status();
            if !status.is_success() {
                let body = read_capped(&mut response).await.unwrap_or_default();
                return Err(ExpandError::Status {
                    status: status.as_u16(),
                    snippet: snippet(&String::from_utf8_lossy(&body)),
                });
            }
            // Reject a declared oversize body without reading it.
            if response
                .content_length()
                .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
            {
                return Err(ExpandError::BodyTooLarge);
            }
            let body = read_capped(&mut response).await?;
            parse_reply(&body)
        };
        // The client has the same limit, but it may report it as a body or connect error;
        // one outer deadline gives one clear cause.
        match tokio::time::timeout(self.config.timeout, exchange).await {
            Ok(Err(ExpandError::Timeout(_))) | Err(_) => {
                Err(ExpandError::Timeout(self.config.timeout))
            }
            Ok(result) => result,
        }
    }

    /// Cleans the raw answer and fits it to the CLIP window.
    fn finish(&self, raw: &str) -> Result<String, ExpandError> {
        let cleaned = clean_reply(raw);
        if cleaned.is_empty() {
            return Err(ExpandError::Empty);
        }
        if looks_like_refusal(&cleaned) {
            return Err(ExpandError::Refusal(snippet(&cleaned)));
        }
        fit_clip_window(&self.tokenizer, &cleaned).ok_or(ExpandError::TooLong)
    }
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    temperature: f32,
    max_tokens: u32,
    stream: bool,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Deserialize)]
struct ChatResponse {
    // Missing is treated like empty: both mean "no answer".
    #[serde(default)]
    choices: Vec<ChatChoice>,
    // Some servers answer 200 with an error object; worth showing in the log.
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: Option<ChatReplyMessage>,
}

#[derive(Deserialize)]
struct ChatReplyMessage {
    content: Option<String>,
}

fn parse_reply(body: &[u8]) -> Result<String, ExpandError> {
    let reply: ChatResponse =
        serde_json::from_slice(body).map_err(|e| ExpandError::Malformed(e.to_string()))?;
    let Some(first) = reply.choices.into_iter().next() else {
        let detail = reply
            .error
            .map(|e| format!(" (error: {})", snippet(&e.to_string())))
            .unwrap_or_default();
        return Err(ExpandError::NoChoices(detail));
    };
    Ok(first.message.and_then(|m| m.content).unwrap_or_default())
}

/// Reads the body, giving up as soon as it passes [`MAX_RESPONSE_BYTES`] so a server that
/// streams forever cannot hold memory or the job.
async fn read_capped(response: &mut reqwest::Response) -> Result<Vec<u8>, ExpandError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ExpandError::from_http)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ExpandError::BodyTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// First 200 characters on one line, for log messages.
fn snippet(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

#[derive(Debug, thiserror::Error)]
enum ExpandError {
    #[error("empty prompt, nothing to expand")]
    EmptyPrompt,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("endpoint answered HTTP {status}: {snippet}")]
    Status { status: u16, snippet: String },
    #[error("response body over {MAX_RESPONSE_BYTES} bytes")]
    BodyTooLarge,
    #[error("malformed JSON response: {0}")]
    Malformed(String),
    #[error("response has no choices{0}")]
    NoChoices(String),
    #[error("answer is empty after cleaning")]
    Empty,
    #[error("answer looks like a refusal: {0}")]
    Refusal(String),
    #[error("answer has no word boundary inside the 77-token CLIP window")]
    TooLong,
}

impl ExpandError {
    fn from_http(e: reqwest::Error) -> Self {
        // reqwest's own message is generic; the source chain says what actually happened.
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        if e.is_timeout() {
            ExpandError::Timeout(Duration::ZERO)
        } else if e.is_connect() {
            ExpandError::Connect(detail)
        } else {
            ExpandError::Request(detail)
        }
    }

    fn reason_for_user(&self) -> String {
        let why = match self {
            ExpandError::EmptyPrompt => "had nothing to work with",
            ExpandError::Timeout(_) => "timed out",
            ExpandError::Connect(_) | ExpandError::Request(_) => {
                "could not reach the language model"
            }
            ExpandError::Status { .. } => "got an error from the language model",
            ExpandError::BodyTooLarge
            | ExpandError::Malformed(_)
            | ExpandError::NoChoices(_)
            | ExpandError::TooLong => "got an unusable answer",
            ExpandError::Empty => "got an empty answer",
            ExpandError::Refusal(_) => "was declined by the language model",
        };
        fallback_line(why)
    }
}

/// Recent expansions keyed by (kind, prompt), so a member re-sending the same idea gets
/// the same text without another LLM call.
struct ExpansionCache {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<(ExpandKind, String), (Instant, String)>,
}

impl ExpansionCache {
    fn new(ttl: Duration, capacity: usize) -> Self {
        ExpansionCache {
            ttl,
            capacity,
            entries: HashMap::new(),
        }
    }

    fn get(&mut self, kind: ExpandKind, prompt: &str, now: Instant) -> Option<String> {
        let key = (kind, prompt.to_string());
        match self.entries.get(&key) {
            Some((at, text)) if now.duration_since(*at) < self.ttl => Some(text.clone()),
            Some(_) => {
                self.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, kind: ExpandKind, prompt: &str, text: &str, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (at, _)| now.duration_since(*at) < ttl);
        }
        if self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        self.entries
            .insert((kind, prompt.to_string()), (now, text.to_string()));
    }
}

/// Regexes for [`clean_reply`], compiled once.
struct Patterns {
    think: Regex,
    line_markup: Regex,
    preamble: Regex,
    interjection: Regex,
    label: Regex,
    trailing_note: Regex,
}

fn patterns() -> &'static Patterns {
    static P: std::sync::OnceLock<Patterns> = std::sync::OnceLock::new();
    P.get_or_init(|| Patterns {
        // Reasoning models may prepend their chain of thought.
        think: Regex::new(r"(?s)<think>.*?</think>").expect("valid regex"),
        // Headings, block quotes, bullets and list numbers at the start of a line.
        line_markup: Regex::new(r"^(?:#{1,6}\s*|>\s*|[-*•+]\s+|\d{1,2}[.)]\s+)+")
            .expect("valid regex"),
        // "Here is an expanded prompt:", "Expanded prompt:", "Prompt -".
        preamble: Regex::new(
            r"(?i)^(?:here(?:'s|’s| is| are)\b[^:\n]{0,100}:|(?:the |your )?(?:expanded |enhanced |improved |rewritten |final |video )*prompt\s*(?::|\s[-–—]))\s*",
        )
        .expect("valid regex"),
        // "Sure!", "Certainly.", "Of course," before the answer.
        interjection: Regex::new(
            r"(?i)^(?:sure|certainly|of course|absolutely|okay|ok|great)(?:\s+thing)?\s*[!.,:]\s*",
        )
        .expect("valid regex"),
        // A line that only names what follows ("## Expanded Prompt", "**Prompt:**").
        label: Regex::new(
            r"(?i)^(?:the |your )?(?:expanded |enhanced |improved |rewritten |final |video )*prompt\s*:?$",
        )
        .expect("valid regex"),
        // Chatty closing remarks after the prompt.
        trailing_note: Regex::new(
            r"(?i)^(?:let me know|i hope|feel free|note:|this prompt|this description|would you like)",
        )
        .expect("valid regex"),
    })
}

/// Removes chat habits from an answer: think blocks, markdown, preambles, closing notes,
/// line breaks and surrounding quotes. Returns one line.
fn clean_reply(raw: &str) -> String {
    let p = patterns();
    let text = p.think.replace_all(raw, " ");

    // Paragraphs of de-marked lines; code fences are dropped but their content kept.
    let mut paragraphs: Vec<String> = vec![String::new()];
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("```") {
            continue;
        }
        if line.is_empty() {
            if !paragraphs.last().is_some_and(|p| p.is_empty()) {
                paragraphs.push(String::new());
            }
            continue;
        }
        let line = p.line_markup.replace(line, "");
        let line = line
            .replace("**", "")
            .replace("__", "")
            .replace(['`', '*'], "");
        if p.label.is_match(line.trim()) {
            continue;
        }
        let para = paragraphs.last_mut().expect("never empty");
        if !para.is_empty() {
            para.push(' ');
        }
        para.push_str(line.trim());
    }
    paragraphs.retain(|p| !p.trim().is_empty());

    // A separate first paragraph that only announces the answer ("Sure! Here it is:").
    if paragraphs.len() > 1 {
        let first = paragraphs[0].trim();
        let stripped = p.interjection.replace(first, "");
        if first.ends_with(':') || stripped.trim().is_empty() || p.preamble.is_match(first) {
            paragraphs.remove(0);
        }
    }
    while paragraphs.len() > 1
        && paragraphs
            .last()
            .is_some_and(|l| p.trailing_note.is_match(l.trim()))
    {
        paragraphs.pop();
    }

    let mut text = paragraphs.join(" ");
    text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    // Peel preambles and quotes in any order ("Sure! Here is the prompt: \"A cat…\"").
    loop {
        let before = text.len();
        text = p.interjection.replace(&text, "").into_owned();
        text = p.preamble.replace(&text, "").into_owned();
        text = strip_quotes(text.trim()).to_string();
        if text.len() == before {
            break;
        }
    }
    text
}

/// Removes one pair of matching quotes around the whole text (a trailing period after the
/// closing quote is kept outside and dropped with it).
fn strip_quotes(text: &str) -> &str {
    const PAIRS: [(char, char); 5] = [('"', '"'), ('\'', '\''), ('“', '”'), ('‘', '’'), ('«', '»')];
    let body = text
        .strip_suffix('.')
        .filter(|b| PAIRS.iter().any(|(_, close)| b.ends_with(*close)));
    let candidate = body.unwrap_or(text);
    for (open, close) in PAIRS {
        if let Some(inner) = candidate
            .strip_prefix(open)
            .and_then(|t| t.strip_suffix(close))
        {
            // Only when the quotes wrap everything, not `"a" and "b"`.
            if !inner.contains(open) && !inner.contains(close) {
                return inner.trim();
            }
        }
    }
    text
}

/// True when the answer opens like a refusal rather than a prompt.
fn looks_like_refusal(text: &str) -> bool {
    const OPENINGS: [&str; 16] = [
        "i can't",
        "i cannot",
        "i can not",
        "i won't",
        "i will not",
        "i'm sorry",
        "i am sorry",
        "sorry,",
        "sorry but",
        "i'm unable",
        "i am unable",
        "i'm not able",
        "i am not able",
        "as an ai",
        "i apologize",
        "unfortunately, i",
    ];
    let lower = text.to_lowercase().replace('’', "'");
    OPENINGS.iter().any(|o| lower.starts_with(o))
}

/// Words that should not end a trimmed prompt: they promise something that was cut.
const DANGLING: [&str; 18] = [
    "a", "an", "the", "and", "or", "with", "of", "in", "on", "at", "to", "by", "for", "from",
    "while", "as", "into", "its",
];

/// Makes `text` fit the CLIP window, cutting at a word boundary (at a sentence end when
/// one is close). `None` when not even the first word fits.
fn fit_clip_window(tokenizer: &ClipTokenizer, text: &str) -> Option<String> {
    let fits = |t: &str| tokenizer.encode(t).untruncated_len <= CONTEXT_LENGTH;
    if fits(text) {
        return Some(text.to_string());
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    // Token count grows with the number of words, so binary search the longest prefix.
    let (mut lo, mut hi) = (0, words.len());
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fits(&words[..mid].join(" ")) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        return None;
    }
    let mut cut = words[..lo].to_vec();
    // Prefer a whole sentence if it keeps most of the text.
    if let Some(end) = cut
        .iter()
        .rposition(|w| w.ends_with(['.', '!', '?']))
        .filter(|&i| (i + 1) * 3 >= lo * 2)
    {
        cut.truncate(end + 1);
    } else {
        while cut.len() > 1 {
            let last = cut[cut.len() - 1]
                .trim_end_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase();
            if DANGLING.contains(&last.as_str()) {
                cut.pop();
            } else {
                break;
            }
        }
    }
    let joined = cut.join(" ");
    let trimmed = joined.trim_end_matches([',', ';', ':', '-', '–', '—', '(', '/', '&']);
    Some(trimmed.trim_end().to_string())
}

// ---------------------------------------------------------------------------------------------
// Plugging into the job service.

impl From<crate::core::JobKind> for ExpandKind {
    fn from(kind: crate::core::JobKind) -> Self {
        match kind {
            crate::core::JobKind::TextToVideo => ExpandKind::TextToVideo,
            crate::core::JobKind::ImageToVideo => ExpandKind::ImageToVideo,
        }
    }
}

impl From<Expansion> for crate::core::ExpandOutcome {
    fn from(expansion: Expansion) -> Self {
        match expansion {
            Expansion::Expanded { text, .. } => crate::core::ExpandOutcome::Expanded(text),
            // The cause is already logged by `LlmExpander::expand`; the service shows `reason`.
            Expansion::Fallback {
                reason_for_user, ..
            } => crate::core::ExpandOutcome::Unchanged {
                reason: reason_for_user,
            },
        }
    }
}

#[async_trait::async_trait]
impl crate::core::PromptExpander for LlmExpander {
    async fn expand(&self, prompt: &str, kind: crate::core::JobKind) -> crate::core::ExpandOutcome {
        // Inherent method (takes precedence over this trait method).
        LlmExpander::expand(self, prompt, kind.into()).await.into()
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
mod tests {
    use super::*;

    #[test]
    fn builtin_prompts_parse_with_examples() {
        let p = ExpandPrompts::builtin();
        assert!(p.t2v.system.contains("text-to-video"));
        assert!(p.i2v.system.contains("image-to-video"));
        assert!(p.t2v.examples.len() >= 2 && p.i2v.examples.len() >= 2);
    }

    #[test]
    fn builtin_examples_fit_the_clip_window() {
        let tok = ClipTokenizer::new().unwrap();
        let p = ExpandPrompts::builtin();
        for (_, answer) in p.t2v.examples.iter().chain(&p.i2v.examples) {
            assert!(
                tok.encode(answer).untruncated_len <= CONTEXT_LENGTH,
                "{answer}"
            );
        }
    }

    #[test]
    fn template_parse_rejects_bad_layouts() {
        assert!(PromptTemplate::parse("hello\n[system]\nx").is_err());
        assert!(PromptTemplate::parse("[user]\nx\n[assistant]\ny").is_err());
        assert!(PromptTemplate::parse("[system]\nx\n[user]\nonly").is_err());
        assert!(PromptTemplate::parse("[system]\nx\n[tool]\ny").is_err());
        let t =
            PromptTemplate::parse("# c\n[system]\nline one\nline two\n[user]\nu\n[assistant]\na\n")
                .unwrap();
        assert_eq!(t.system, "line one line two");
        assert_eq!(t.examples, vec![("u".to_string(), "a".to_string())]);
    }

    #[test]
    fn clean_strips_quotes_markdown_and_preambles() {
        let cases = [
            ("\"A cat surfing a wave.\"", "A cat surfing a wave."),
            ("“A cat surfing”.", "A cat surfing"),
            ("Here is an expanded prompt: A cat surfing", "A cat surfing"),
            (
                "Sure! Here's your prompt:\n\n**A cat** surfing",
                "A cat surfing",
            ),
            ("Sure!\n\nA cat surfing", "A cat surfing"),
            (
                "## Prompt\n- A cat\n- surfing a `wave`",
                "A cat surfing a wave",
            ),
            ("**Expanded prompt:**\nA cat surfing", "A cat surfing"),
            ("Prompt - A cat surfing", "A cat surfing"),
            ("Expanded prompt: \"A cat\"", "A cat"),
            (
                "A cat\nsurfing\n\nLet me know if you want changes!",
                "A cat surfing",
            ),
            ("<think>hmm</think>\nA cat surfing", "A cat surfing"),
            ("```\nA cat surfing\n```", "A cat surfing"),
            ("  ", ""),
            ("\"\"", ""),
        ];
        for (raw, want) in cases {
            assert_eq!(clean_reply(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn clean_keeps_inner_quotes_and_normal_text() {
        assert_eq!(
            clean_reply("A sign reading \"open\" on a door"),
            "A sign reading \"open\" on a door"
        );
        assert_eq!(clean_reply("\"a\" and \"b\""), "\"a\" and \"b\"");
        assert_eq!(
            clean_reply("Prompt-driven robots dance"),
            "Prompt-driven robots dance"
        );
        assert_eq!(
            clean_reply("Sunrise over hills: golden light"),
            "Sunrise over hills: golden light"
        );
    }

    #[test]
    fn refusals_are_recognised() {
        assert!(looks_like_refusal("I can't help with that."));
        assert!(looks_like_refusal("I’m sorry, but no"));
        assert!(looks_like_refusal("As an AI language model, ..."));
        assert!(!looks_like_refusal("A robot saying sorry"));
    }

    #[test]
    fn fitting_cuts_at_a_word_boundary_and_drops_dangling_words() {
        let tok = ClipTokenizer::new().unwrap();
        let long = "a red fox running through deep snow with the forest behind ".repeat(12);
        let fitted = fit_clip_window(&tok, long.trim()).unwrap();
        assert!(tok.encode(&fitted).untruncated_len <= CONTEXT_LENGTH);
        assert!(long.starts_with(&fitted));
        assert!(long[fitted.len()..].starts_with(' '));
        let last = fitted.rsplit(' ').next().unwrap();
        assert!(!DANGLING.contains(&last), "{fitted}");
        assert_eq!(
            fit_clip_window(&tok, "short one").as_deref(),
            Some("short one")
        );
        assert_eq!(fit_clip_window(&tok, &"x".repeat(2000)), None);
    }

    #[test]
    fn cache_expires_and_stays_bounded() {
        let mut c = ExpansionCache::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        c.put(ExpandKind::TextToVideo, "a", "A", t0);
        assert_eq!(
            c.get(ExpandKind::TextToVideo, "a", t0).as_deref(),
            Some("A")
        );
        assert_eq!(c.get(ExpandKind::ImageToVideo, "a", t0), None);
        assert_eq!(
            c.get(ExpandKind::TextToVideo, "a", t0 + Duration::from_secs(11)),
            None
        );
        c.put(ExpandKind::TextToVideo, "a", "A", t0);
        c.put(
            ExpandKind::TextToVideo,
            "b",
            "B",
            t0 + Duration::from_secs(1),
        );
        c.put(
            ExpandKind::TextToVideo,
            "c",
            "C",
            t0 + Duration::from_secs(2),
        );
        assert_eq!(c.entries.len(), 2);
        assert_eq!(
            c.get(ExpandKind::TextToVideo, "a", t0 + Duration::from_secs(2)),
            None
        );
    }

    #[test]
    fn unavailable_keeps_the_original_prompt() {
        let outcome = Expansion::unavailable();
        assert!(matches!(outcome, Expansion::Fallback { .. }));
        assert_eq!(outcome.prompt("a cat"), "a cat");
    }

    #[test]
    fn api_key_is_redacted_in_debug() {
        let mut cfg = ExpanderConfig::new("http://x", "m");
        cfg.api_key = Some(ApiKey::new("sk-secret-123"));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("sk-secret-123"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
