//! The closed sets of label values a scrape can show. Each is an enum with one `label()` string,
//! so the set of time series stays bounded (no free text, ids or prompts in labels) and callers
//! pass domain values, never strings.

use crate::core::jobs::JobState;
use crate::core::refusal::Refusal;

/// How a job that ran (or was waiting) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobOutcome {
    Done,
    Failed,
    Cancelled,
}

impl JobOutcome {
    pub const ALL: [JobOutcome; 3] = [JobOutcome::Done, JobOutcome::Failed, JobOutcome::Cancelled];

    /// The outcome a final state stands for; `None` for a job still queued or running.
    pub fn from_state(state: JobState) -> Option<JobOutcome> {
        match state {
            JobState::Done => Some(JobOutcome::Done),
            JobState::Failed => Some(JobOutcome::Failed),
            JobState::Cancelled => Some(JobOutcome::Cancelled),
            JobState::Queued | JobState::Running => None,
        }
    }

    pub fn state(self) -> JobState {
        match self {
            JobOutcome::Done => JobState::Done,
            JobOutcome::Failed => JobState::Failed,
            JobOutcome::Cancelled => JobState::Cancelled,
        }
    }
}

/// Why a request was refused, one value per kind of [`Refusal`] (without its details).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    WaitingLimit,
    Cooldown,
    QueueFull,
    ShuttingDown,
    ChannelNotAllowed,
    BlockedWord,
    PromptTooLong,
    EmptyPrompt,
    Invalid,
    ModelNotLoaded,
    Unavailable,
}

impl RefusalReason {
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::WaitingLimit => "waiting_limit",
            RefusalReason::Cooldown => "cooldown",
            RefusalReason::QueueFull => "queue_full",
            RefusalReason::ShuttingDown => "shutting_down",
            RefusalReason::ChannelNotAllowed => "channel_not_allowed",
            RefusalReason::BlockedWord => "blocked_word",
            RefusalReason::PromptTooLong => "prompt_too_long",
            RefusalReason::EmptyPrompt => "empty_prompt",
            RefusalReason::Invalid => "invalid_parameter",
            RefusalReason::ModelNotLoaded => "model_not_loaded",
            RefusalReason::Unavailable => "store_unavailable",
        }
    }
}

impl From<&Refusal> for RefusalReason {
    fn from(refusal: &Refusal) -> Self {
        match refusal {
            Refusal::WaitingLimit { .. } => RefusalReason::WaitingLimit,
            Refusal::Cooldown { .. } => RefusalReason::Cooldown,
            Refusal::QueueFull { .. } => RefusalReason::QueueFull,
            Refusal::ShuttingDown => RefusalReason::ShuttingDown,
            Refusal::ChannelNotAllowed { .. } => RefusalReason::ChannelNotAllowed,
            Refusal::BlockedWord { .. } => RefusalReason::BlockedWord,
            Refusal::PromptTooLong { .. } => RefusalReason::PromptTooLong,
            Refusal::EmptyPrompt => RefusalReason::EmptyPrompt,
            Refusal::Invalid(_) => RefusalReason::Invalid,
            Refusal::ModelNotLoaded { .. } => RefusalReason::ModelNotLoaded,
            Refusal::Unavailable(_) => RefusalReason::Unavailable,
        }
    }
}

/// What went wrong with a Discord API call, by the HTTP answer (or the lack of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiscordFailure {
    /// 429: Discord's rate limit.
    RateLimited,
    /// 401 or a dead interaction webhook: the token no longer works.
    Unauthorized,
    /// 413: the upload was larger than the server allows.
    TooLarge,
    /// 404: the message, webhook or channel is gone.
    NotFound,
    /// Any other 4xx.
    ClientError,
    /// 5xx.
    ServerError,
    /// No HTTP answer: connection, TLS or timeout.
    Network,
    /// Failed before anything was sent (a bad URL, header or payload built locally).
    Other,
}

impl DiscordFailure {
    pub fn from_status(status: u16) -> DiscordFailure {
        match status {
            429 => DiscordFailure::RateLimited,
            401 => DiscordFailure::Unauthorized,
            413 => DiscordFailure::TooLarge,
            404 => DiscordFailure::NotFound,
            500..=599 => DiscordFailure::ServerError,
            _ => DiscordFailure::ClientError,
        }
    }

    /// Classifies a serenity error: its HTTP status when Discord answered, `Network` when the
    /// request got no answer.
    pub fn from_serenity(err: &serenity::Error) -> DiscordFailure {
        use serenity::http::HttpError;
        match err {
            serenity::Error::Http(HttpError::UnsuccessfulRequest(resp)) => {
                DiscordFailure::from_status(resp.status_code.as_u16())
            }
            serenity::Error::Http(HttpError::Request(_)) | serenity::Error::Io(_) => {
                DiscordFailure::Network
            }
            _ => DiscordFailure::Other,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            DiscordFailure::RateLimited => "rate_limited",
            DiscordFailure::Unauthorized => "unauthorized",
            DiscordFailure::TooLarge => "too_large",
            DiscordFailure::NotFound => "not_found",
            DiscordFailure::ClientError => "client_error",
            DiscordFailure::ServerError => "server_error",
            DiscordFailure::Network => "network",
            DiscordFailure::Other => "other",
        }
    }
}

/// Why a requested prompt expansion fell back to the member's own prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LlmFallback {
    /// The endpoint did not answer in time.
    Timeout,
    /// Connection refused, DNS, TLS: no HTTP answer.
    Unreachable,
    /// The endpoint answered with an error status.
    ErrorStatus,
    /// An answer that could not be used: malformed, empty, too long, declined.
    UnusableAnswer,
    /// The expansion added a word the server blocks.
    BlockedWord,
    /// Expansion was asked for where no endpoint is configured.
    NotConfigured,
}

impl LlmFallback {
    pub fn label(self) -> &'static str {
        match self {
            LlmFallback::Timeout => "timeout",
            LlmFallback::Unreachable => "unreachable",
            LlmFallback::ErrorStatus => "error_status",
            LlmFallback::UnusableAnswer => "unusable_answer",
            LlmFallback::BlockedWord => "blocked_word",
            LlmFallback::NotConfigured => "not_configured",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_refusal_has_its_own_reason() {
        let refusals = [
            Refusal::WaitingLimit { limit: 2 },
            Refusal::Cooldown {
                cooldown: Duration::from_secs(60),
                retry_in: Duration::from_secs(5),
            },
            Refusal::QueueFull { cap: 10 },
            Refusal::ShuttingDown,
            Refusal::ChannelNotAllowed { allowed: vec![1] },
            Refusal::BlockedWord { word: "x".into() },
            Refusal::PromptTooLong { len: 9, max: 5 },
            Refusal::EmptyPrompt,
            Refusal::Invalid("steps".into()),
            Refusal::ModelNotLoaded {
                variant: "vc2".into(),
                loaded: vec![],
            },
            Refusal::Unavailable("disk full".into()),
        ];
        let labels: std::collections::HashSet<_> = refusals
            .iter()
            .map(|r| RefusalReason::from(r).label())
            .collect();
        assert_eq!(labels.len(), refusals.len());
        assert!(labels
            .iter()
            .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }

    #[test]
    fn http_statuses_fall_into_their_class() {
        assert_eq!(
            DiscordFailure::from_status(429),
            DiscordFailure::RateLimited
        );
        assert_eq!(
            DiscordFailure::from_status(502),
            DiscordFailure::ServerError
        );
        assert_eq!(
            DiscordFailure::from_status(400),
            DiscordFailure::ClientError
        );
        assert_eq!(DiscordFailure::from_status(413).label(), "too_large");
    }

    #[test]
    fn outcomes_are_the_final_states() {
        for outcome in JobOutcome::ALL {
            assert_eq!(JobOutcome::from_state(outcome.state()), Some(outcome));
        }
        assert_eq!(JobOutcome::from_state(JobState::Running), None);
    }
}
