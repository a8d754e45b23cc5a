//! Unit tests of the expander's parts that need no endpoint.

use std::time::{Duration, Instant};

use super::cache::ExpansionCache;
use super::cleaning::{clean_reply, fit_clip_window, looks_like_refusal, DANGLING};
use super::*;
use crate::models::tokenizer::{ClipTokenizer, CONTEXT_LENGTH};

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
    let t = PromptTemplate::parse("# c\n[system]\nline one\nline two\n[user]\nu\n[assistant]\na\n")
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
