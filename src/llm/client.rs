//! The HTTP side: one chat-completions call per expansion, capped in time and size, its
//! answer cleaned and cached; and the implementation of the core's expander port.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::cache::ExpansionCache;
use super::cleaning::{clean_reply, fit_clip_window, looks_like_refusal};
use super::prompts::ExpandPrompts;
use super::{fallback_line, ExpandKind, ExpanderConfig, Expansion, MAX_RESPONSE_BYTES};
use crate::models::tokenizer::ClipTokenizer;

/// Calls the endpoint, cleans the answer, caches it. Build one per process and share it.
pub struct LlmExpander {
    client: reqwest::Client,
    endpoint: String,
    config: ExpanderConfig,
    prompts: ExpandPrompts,
    tokenizer: Arc<ClipTokenizer>,
    cache: Mutex<ExpansionCache>,
    metrics: crate::ops::Metrics,
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
            metrics: crate::ops::Metrics::new(),
        })
    }

    /// Counts fallbacks in `metrics` (the process's registry) rather than a private one.
    pub fn with_metrics(mut self, metrics: crate::ops::Metrics) -> Self {
        self.metrics = metrics;
        self
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
                self.metrics.llm_fallback(e.fallback_kind());
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

    fn fallback_kind(&self) -> crate::ops::LlmFallback {
        use crate::ops::LlmFallback;
        match self {
            ExpandError::Timeout(_) => LlmFallback::Timeout,
            ExpandError::Connect(_) | ExpandError::Request(_) => LlmFallback::Unreachable,
            ExpandError::Status { .. } => LlmFallback::ErrorStatus,
            ExpandError::EmptyPrompt
            | ExpandError::BodyTooLarge
            | ExpandError::Malformed(_)
            | ExpandError::NoChoices(_)
            | ExpandError::TooLong
            | ExpandError::Empty
            | ExpandError::Refusal(_) => LlmFallback::UnusableAnswer,
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
