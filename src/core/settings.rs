//! Per-guild settings: the keys a server's admins may change, each parsed and validated with a
//! message that says what is allowed. The store keeps only the overrides (so a changed operator
//! default reaches every guild that did not choose otherwise) and an audit line per change.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::engine::Limits;
use crate::models::config::Variant;

/// The effective settings of one guild. The operator's defaults (in `floor33.toml`) are a value
/// of this type too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuildSettings {
    #[serde(with = "crate::core::jobs::variant_name")]
    pub default_variant: Variant,
    pub default_steps: usize,
    pub max_steps: usize,
    pub cfg: f64,
    pub eta: f64,
    pub fps: u32,
    pub expand_by_default: bool,
    pub member_waiting_limit: usize,
    pub cooldown_s: u64,
    /// Channels where videos may be made; empty means all.
    pub allowed_channels: Vec<u64>,
    /// Words or phrases a prompt may not contain (matched whole-word, any case).
    pub blocked_words: Vec<String>,
    pub max_prompt_len: usize,
}

impl Default for GuildSettings {
    fn default() -> Self {
        GuildSettings {
            default_variant: Variant::Vc2,
            default_steps: 50,
            max_steps: 100,
            cfg: 12.0,
            eta: 1.0,
            fps: 28,
            expand_by_default: false,
            member_waiting_limit: 2,
            cooldown_s: 0,
            allowed_channels: Vec::new(),
            blocked_words: Vec::new(),
            max_prompt_len: 500,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SettingKey {
    DefaultVariant,
    DefaultSteps,
    MaxSteps,
    Cfg,
    Eta,
    Fps,
    ExpandByDefault,
    MemberWaitingLimit,
    CooldownSeconds,
    AllowedChannels,
    BlockedWords,
    MaxPromptLength,
}

impl SettingKey {
    pub const ALL: [SettingKey; 12] = [
        SettingKey::DefaultVariant,
        SettingKey::DefaultSteps,
        SettingKey::MaxSteps,
        SettingKey::Cfg,
        SettingKey::Eta,
        SettingKey::Fps,
        SettingKey::ExpandByDefault,
        SettingKey::MemberWaitingLimit,
        SettingKey::CooldownSeconds,
        SettingKey::AllowedChannels,
        SettingKey::BlockedWords,
        SettingKey::MaxPromptLength,
    ];

    /// The name used in commands and in the store.
    pub fn name(self) -> &'static str {
        match self {
            SettingKey::DefaultVariant => "default_variant",
            SettingKey::DefaultSteps => "default_steps",
            SettingKey::MaxSteps => "max_steps",
            SettingKey::Cfg => "cfg",
            SettingKey::Eta => "eta",
            SettingKey::Fps => "fps",
            SettingKey::ExpandByDefault => "expand_by_default",
            SettingKey::MemberWaitingLimit => "member_waiting_limit",
            SettingKey::CooldownSeconds => "cooldown_s",
            SettingKey::AllowedChannels => "allowed_channels",
            SettingKey::BlockedWords => "blocked_words",
            SettingKey::MaxPromptLength => "max_prompt_len",
        }
    }

    pub fn parse(name: &str) -> Result<SettingKey, SettingError> {
        let name = name.trim();
        SettingKey::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| SettingError::UnknownKey {
                key: name.to_string(),
            })
    }

    /// One line for `/config show` and the command's help.
    pub fn description(self) -> &'static str {
        match self {
            SettingKey::DefaultVariant => "model used when a request names none",
            SettingKey::DefaultSteps => "sampling steps when a request gives none",
            SettingKey::MaxSteps => "most sampling steps a request may ask for",
            SettingKey::Cfg => "default guidance scale",
            SettingKey::Eta => "default DDIM eta (0 = deterministic, 1 = DDPM-like)",
            SettingKey::Fps => "default fps conditioning",
            SettingKey::ExpandByDefault => {
                "expand prompts with the language model unless asked not to"
            }
            SettingKey::MemberWaitingLimit => "most videos one member may have waiting",
            SettingKey::CooldownSeconds => "seconds a member waits between two requests",
            SettingKey::AllowedChannels => "channel ids where videos may be made (empty = all)",
            SettingKey::BlockedWords => "comma-separated words or phrases refused in prompts",
            SettingKey::MaxPromptLength => "most characters in a prompt",
        }
    }
}

impl fmt::Display for SettingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum SettingError {
    #[error("there is no setting `{key}` (settings: {})", SettingKey::ALL.map(|k| k.name()).join(", "))]
    UnknownKey { key: String },
    #[error("`{key}` cannot be `{value}`: {reason}")]
    Invalid {
        key: SettingKey,
        value: String,
        reason: String,
    },
    #[error("settings could not be saved: {0}")]
    Storage(String),
}

/// What bounds a guild's choices: the engine's hard limits and the models this bot serves.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsBounds {
    pub limits: Limits,
    pub variants: Vec<Variant>,
}

impl GuildSettings {
    /// The value of `key` in the form `set` accepts.
    pub fn get(&self, key: SettingKey) -> String {
        match key {
            SettingKey::DefaultVariant => self.default_variant.name().to_string(),
            SettingKey::DefaultSteps => self.default_steps.to_string(),
            SettingKey::MaxSteps => self.max_steps.to_string(),
            SettingKey::Cfg => self.cfg.to_string(),
            SettingKey::Eta => self.eta.to_string(),
            SettingKey::Fps => self.fps.to_string(),
            SettingKey::ExpandByDefault => self.expand_by_default.to_string(),
            SettingKey::MemberWaitingLimit => self.member_waiting_limit.to_string(),
            SettingKey::CooldownSeconds => self.cooldown_s.to_string(),
            SettingKey::AllowedChannels => self
                .allowed_channels
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            SettingKey::BlockedWords => self.blocked_words.join(", "),
            SettingKey::MaxPromptLength => self.max_prompt_len.to_string(),
        }
    }

    /// Parses `raw` into `key` and checks the whole result against `bounds`; on error `self`
    /// is unchanged.
    pub fn set(
        &mut self,
        key: SettingKey,
        raw: &str,
        bounds: &SettingsBounds,
    ) -> Result<(), SettingError> {
        let mut next = self.clone();
        next.parse_into(key, raw, bounds)?;
        next.check(key, raw, bounds)?;
        *self = next;
        Ok(())
    }

    /// Applies stored overrides over `self` (the defaults). One that no longer fits (a model
    /// the operator stopped loading, a tightened limit) is skipped with a warning rather than
    /// making the guild unusable.
    pub fn with_overrides(
        mut self,
        overrides: &[(String, String)],
        bounds: &SettingsBounds,
    ) -> GuildSettings {
        for (name, value) in overrides {
            let result = SettingKey::parse(name).and_then(|key| self.set(key, value, bounds));
            if let Err(e) = result {
                tracing::warn!(setting = %name, error = %e, "stored guild setting ignored");
            }
        }
        self
    }

    fn parse_into(
        &mut self,
        key: SettingKey,
        raw: &str,
        bounds: &SettingsBounds,
    ) -> Result<(), SettingError> {
        let value = raw.trim();
        let invalid = |reason: String| SettingError::Invalid {
            key,
            value: value.to_string(),
            reason,
        };
        let whole = |lo: u64, hi: u64| -> Result<u64, SettingError> {
            value
                .parse::<u64>()
                .ok()
                .filter(|v| (lo..=hi).contains(v))
                .ok_or_else(|| invalid(format!("it must be a whole number from {lo} to {hi}")))
        };
        let real = |lo: f64, hi: f64| -> Result<f64, SettingError> {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && (lo..=hi).contains(v))
                .ok_or_else(|| invalid(format!("it must be a number from {lo} to {hi}")))
        };
        let limits = &bounds.limits;
        match key {
            SettingKey::DefaultVariant => {
                let names: Vec<_> = bounds.variants.iter().map(|v| v.name()).collect();
                self.default_variant = bounds
                    .variants
                    .iter()
                    .copied()
                    .find(|v| v.name() == value)
                    .ok_or_else(|| {
                        invalid(format!("the models on this bot are {}", names.join(", ")))
                    })?;
            }
            SettingKey::DefaultSteps => {
                self.default_steps = whole(1, limits.max_steps as u64)? as usize
            }
            SettingKey::MaxSteps => self.max_steps = whole(1, limits.max_steps as u64)? as usize,
            SettingKey::Cfg => self.cfg = real(limits.cfg_range.0, limits.cfg_range.1)?,
            SettingKey::Eta => self.eta = real(0.0, 1.0)?,
            SettingKey::Fps => {
                self.fps = whole(limits.fps_range.0 as u64, limits.fps_range.1 as u64)? as u32
            }
            SettingKey::ExpandByDefault => {
                self.expand_by_default = match value.to_lowercase().as_str() {
                    "true" | "yes" | "on" | "1" => true,
                    "false" | "no" | "off" | "0" => false,
                    _ => return Err(invalid("it must be true or false".into())),
                }
            }
            SettingKey::MemberWaitingLimit => self.member_waiting_limit = whole(1, 100)? as usize,
            SettingKey::CooldownSeconds => self.cooldown_s = whole(0, 86_400)?,
            SettingKey::AllowedChannels => {
                self.allowed_channels = list_items(value)
                    .map(|item| {
                        // Accept a pasted channel mention as well as a bare id.
                        let id = item.trim_start_matches("<#").trim_end_matches('>');
                        id.parse::<u64>().map_err(|_| {
                            invalid(format!("`{item}` is not a channel id (a list of ids, or empty for all channels)"))
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
            SettingKey::BlockedWords => {
                let words: Vec<String> = list_items(value).map(|w| w.to_lowercase()).collect();
                if let Some(w) = words.iter().find(|w| words_of(w).is_empty()) {
                    return Err(invalid(format!("`{w}` has no letters or digits to match")));
                }
                self.blocked_words = words;
            }
            SettingKey::MaxPromptLength => {
                self.max_prompt_len = whole(1, limits.max_prompt_chars as u64)? as usize
            }
        }
        Ok(())
    }

    /// Cross-key rules, reported against the key being set.
    fn check(
        &self,
        key: SettingKey,
        raw: &str,
        _bounds: &SettingsBounds,
    ) -> Result<(), SettingError> {
        if self.default_steps > self.max_steps {
            return Err(SettingError::Invalid {
                key,
                value: raw.trim().to_string(),
                reason: format!(
                    "default_steps ({}) may not exceed max_steps ({})",
                    self.default_steps, self.max_steps
                ),
            });
        }
        Ok(())
    }

    /// The first blocked word or phrase `prompt` contains, if any.
    pub fn blocked_word_in(&self, prompt: &str) -> Option<&str> {
        let words = words_of(prompt);
        self.blocked_words
            .iter()
            .find(|blocked| {
                let phrase = words_of(blocked);
                !phrase.is_empty() && words.windows(phrase.len()).any(|w| w == phrase.as_slice())
            })
            .map(String::as_str)
    }

    pub fn channel_allowed(&self, channel_id: u64) -> bool {
        self.allowed_channels.is_empty() || self.allowed_channels.contains(&channel_id)
    }
}

/// Comma- or whitespace-separated items; `none` or nothing is the empty list.
fn list_items(value: &str) -> impl Iterator<Item = &str> {
    let value = if value.eq_ignore_ascii_case("none") {
        ""
    } else {
        value
    };
    value
        .split(|c: char| c == ',' || (c.is_whitespace() && !value.contains(',')))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Lower-case runs of letters and digits: whole-word matching, so blocking "ass" leaves "class".
fn words_of(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// One line of `/config show`.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingView {
    pub key: SettingKey,
    pub value: String,
    pub default: String,
    /// The guild chose this value.
    pub overridden: bool,
    pub description: &'static str,
}

pub fn view(
    current: &GuildSettings,
    defaults: &GuildSettings,
    overridden: &[String],
) -> Vec<SettingView> {
    SettingKey::ALL
        .into_iter()
        .map(|key| SettingView {
            key,
            value: current.get(key),
            default: defaults.get(key),
            overridden: overridden.iter().any(|o| o == key.name()),
            description: key.description(),
        })
        .collect()
}

/// A settings change, as the audit log records it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub guild_id: u64,
    pub user_id: u64,
    pub at: std::time::SystemTime,
    /// `set` or `reset`.
    pub action: String,
    pub key: String,
    pub old: String,
    pub new: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> SettingsBounds {
        SettingsBounds {
            limits: Limits::default(),
            variants: vec![Variant::Vc2, Variant::Tiny],
        }
    }

    #[test]
    fn each_key_round_trips_through_get_and_set() {
        let mut s = GuildSettings::default();
        let b = bounds();
        for (key, value) in [
            (SettingKey::DefaultVariant, "tiny"),
            (SettingKey::DefaultSteps, "20"),
            (SettingKey::MaxSteps, "60"),
            (SettingKey::Cfg, "7.5"),
            (SettingKey::Eta, "0"),
            (SettingKey::Fps, "8"),
            (SettingKey::ExpandByDefault, "true"),
            (SettingKey::MemberWaitingLimit, "3"),
            (SettingKey::CooldownSeconds, "30"),
            (SettingKey::AllowedChannels, "1, 2"),
            (SettingKey::BlockedWords, "gore, red wine"),
            (SettingKey::MaxPromptLength, "300"),
        ] {
            s.set(key, value, &b).unwrap();
            assert_eq!(s.get(key), value, "{key}");
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_allowed_range() {
        let mut s = GuildSettings::default();
        let b = bounds();
        let err = s.set(SettingKey::MaxSteps, "500", &b).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`max_steps` cannot be `500`: it must be a whole number from 1 to 200"
        );
        let err = s
            .set(SettingKey::DefaultVariant, "t2v-1024", &b)
            .unwrap_err();
        assert!(err.to_string().contains("vc2, tiny"), "{err}");
        let err = s.set(SettingKey::DefaultSteps, "150", &b).unwrap_err();
        assert!(
            err.to_string().contains("may not exceed max_steps (100)"),
            "{err}"
        );
        assert!(s.set(SettingKey::Cfg, "NaN", &b).is_err());
        assert!(s.set(SettingKey::AllowedChannels, "general", &b).is_err());
        assert_eq!(s, GuildSettings::default());
        assert!(matches!(
            SettingKey::parse("colour"),
            Err(SettingError::UnknownKey { .. })
        ));
    }

    #[test]
    fn blocked_words_match_whole_words_and_phrases_in_any_case() {
        let mut s = GuildSettings::default();
        s.set(SettingKey::BlockedWords, "ass, Red Wine", &bounds())
            .unwrap();
        assert_eq!(s.blocked_word_in("a class of students"), None);
        assert_eq!(s.blocked_word_in("kick ASS!"), Some("ass"));
        assert_eq!(s.blocked_word_in("a glass of red  wine"), Some("red wine"));
        s.set(SettingKey::BlockedWords, "none", &bounds()).unwrap();
        assert!(s.blocked_words.is_empty());
    }

    #[test]
    fn channel_mentions_are_accepted_and_empty_means_all() {
        let mut s = GuildSettings::default();
        assert!(s.channel_allowed(5));
        s.set(SettingKey::AllowedChannels, "<#12> <#34>", &bounds())
            .unwrap();
        assert_eq!(s.allowed_channels, vec![12, 34]);
        assert!(!s.channel_allowed(5));
    }
}
