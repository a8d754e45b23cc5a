//! How long an interaction token can still be used, and which Discord errors mean it is dead.
//!
//! A token lives 15 minutes from the interaction's creation, which its snowflake id records; the
//! local receive time would be wrong after a restart. We stop using it a minute early so an edit
//! in flight does not cross the deadline, and treat the errors Discord gives for dead tokens as
//! "continue in the channel with the bot token" rather than retrying (failed requests count
//! against the invalid-request budget).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Discord's epoch (2015-01-01T00:00:00Z) in Unix milliseconds.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// Stop using an interaction token this long after the interaction was created.
pub const TOKEN_USABLE_FOR: Duration = Duration::from_secs(14 * 60);

/// When a snowflake (interaction id, message id, ...) was created.
pub fn snowflake_time(id: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis((id >> 22) + DISCORD_EPOCH_MS)
}

/// Whether the interaction `interaction_id`'s token may still be used at `now`.
pub fn token_usable(interaction_id: u64, now: SystemTime) -> bool {
    match now.duration_since(snowflake_time(interaction_id)) {
        Ok(age) => age < TOKEN_USABLE_FOR,
        // Created "in the future": clocks disagree a little; the token is new.
        Err(_) => true,
    }
}

/// What a failed Discord call means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The interaction token (or its webhook) is gone: switch to the bot token.
    TokenDead,
    /// The upload was too large: send a smaller file.
    TooLarge,
    /// The message we were editing no longer exists.
    MessageGone,
    /// Anything else (network, 5xx, bad request): give up on this edit.
    Other,
}

/// Discord JSON error codes we act on.
pub mod codes {
    pub const UNKNOWN_MESSAGE: isize = 10008;
    pub const UNKNOWN_WEBHOOK: isize = 10015;
    pub const UNKNOWN_INTERACTION: isize = 10062;
    pub const REQUEST_TOO_LARGE: isize = 40005;
    pub const INVALID_WEBHOOK_TOKEN: isize = 50027;
}

/// Classifies an HTTP status and Discord error code (`None` when the body was not Discord JSON,
/// e.g. a proxy's HTML 413 page).
pub fn classify_status(status: u16, code: Option<isize>) -> Failure {
    match (status, code) {
        (_, Some(codes::UNKNOWN_WEBHOOK | codes::UNKNOWN_INTERACTION))
        | (_, Some(codes::INVALID_WEBHOOK_TOKEN))
        | (401, _) => Failure::TokenDead,
        (413, _) | (_, Some(codes::REQUEST_TOO_LARGE)) => Failure::TooLarge,
        (404, Some(codes::UNKNOWN_MESSAGE)) => Failure::MessageGone,
        _ => Failure::Other,
    }
}

/// Classifies a serenity error.
pub fn classify(err: &serenity::Error) -> Failure {
    use serenity::http::HttpError;
    match err {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(resp)) => {
            let code = (resp.error.code >= 0).then_some(resp.error.code);
            classify_status(resp.status_code.as_u16(), code)
        }
        _ => Failure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snowflake_time_matches_discords_documented_example() {
        // From Discord's reference: 175928847299117063 was created 2016-04-30 11:18:25.796 UTC.
        let t = snowflake_time(175_928_847_299_117_063);
        let ms = t.duration_since(UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(ms, 1_462_015_105_796);
    }

    #[test]
    fn token_is_usable_for_fourteen_minutes() {
        let created = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let id = (1_700_000_000_000 - DISCORD_EPOCH_MS) << 22;
        assert!(token_usable(id, created));
        assert!(token_usable(
            id,
            created + Duration::from_secs(13 * 60 + 59)
        ));
        assert!(!token_usable(id, created + Duration::from_secs(14 * 60)));
        assert!(token_usable(id, created - Duration::from_secs(5)));
    }

    #[test]
    fn dead_token_and_too_large_errors_are_recognised() {
        assert_eq!(classify_status(401, Some(50027)), Failure::TokenDead);
        assert_eq!(classify_status(404, Some(10015)), Failure::TokenDead);
        assert_eq!(classify_status(404, Some(10062)), Failure::TokenDead);
        assert_eq!(classify_status(401, None), Failure::TokenDead);
        assert_eq!(classify_status(413, None), Failure::TooLarge);
        assert_eq!(classify_status(400, Some(40005)), Failure::TooLarge);
        assert_eq!(classify_status(404, Some(10008)), Failure::MessageGone);
        assert_eq!(classify_status(500, None), Failure::Other);
        assert_eq!(classify_status(400, Some(50035)), Failure::Other);
    }
}
