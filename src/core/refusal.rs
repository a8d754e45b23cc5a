//! Why a request was not taken, as a typed value: the adapter can show `to_string()` as is (it is
//! written for the member, names the limit and says when to retry) or render the fields itself.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum Refusal {
    #[error("You already have {limit} video(s) waiting, this server's limit per member. Try again once one of them has started.")]
    WaitingLimit { limit: usize },
    #[error("Please wait {} before your next video (this server's cooldown is {}).", human(*retry_in), human(*cooldown))]
    Cooldown {
        cooldown: Duration,
        retry_in: Duration,
    },
    #[error("The queue is full ({cap} videos waiting, the bot-wide limit). Try again in a few minutes, once some have finished.")]
    QueueFull { cap: usize },
    #[error("The bot is restarting and not taking new videos. Try again in a minute.")]
    ShuttingDown,
    #[error("Videos can't be made in this channel on this server; use one of its video channels.")]
    ChannelNotAllowed { allowed: Vec<u64> },
    #[error("Your prompt contains \"{word}\", which is blocked on this server. Remove it and try again.")]
    BlockedWord { word: String },
    #[error("Your prompt is {len} characters long; this server allows at most {max}. Shorten it and try again.")]
    PromptTooLong { len: usize, max: usize },
    #[error("The prompt is empty.")]
    EmptyPrompt,
    /// A parameter out of range; the text names it and the allowed range.
    #[error("{0}")]
    Invalid(String),
    #[error("The model `{variant}` is not loaded on this bot (loaded: {}).", loaded.join(", "))]
    ModelNotLoaded {
        variant: String,
        loaded: Vec<String>,
    },
    /// The request could not be written down (database trouble); nothing was queued.
    #[error("Your request could not be saved ({0}). Nothing was queued; try again in a moment.")]
    Unavailable(String),
}

/// `42s`, `3m 5s`, `2h 10m`: durations the way a person says them.
pub fn human(d: Duration) -> String {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 if s % 60 == 0 => format!("{}m", s / 60),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ if s % 3600 / 60 == 0 => format!("{}h", s / 3600),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_limit_and_the_retry_time() {
        let r = Refusal::Cooldown {
            cooldown: Duration::from_secs(120),
            retry_in: Duration::from_millis(64_500),
        };
        assert_eq!(
            r.to_string(),
            "Please wait 1m 5s before your next video (this server's cooldown is 2m)."
        );
        assert!(Refusal::WaitingLimit { limit: 2 }.to_string().contains('2'));
        assert!(Refusal::QueueFull { cap: 100 }.to_string().contains("100"));
        assert_eq!(human(Duration::from_secs(7500)), "2h 5m");
    }
}
