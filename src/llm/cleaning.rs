//! What an LLM answer goes through before it becomes a prompt: chat habits removed, refusals
//! recognised, and the text cut to the CLIP window at a word boundary.

use regex::Regex;

use crate::models::tokenizer::{ClipTokenizer, CONTEXT_LENGTH};

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
pub(super) fn clean_reply(raw: &str) -> String {
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
pub(super) fn looks_like_refusal(text: &str) -> bool {
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
pub(super) const DANGLING: [&str; 18] = [
    "a", "an", "the", "and", "or", "with", "of", "in", "on", "at", "to", "by", "for", "from",
    "while", "as", "into", "its",
];

/// Makes `text` fit the CLIP window, cutting at a word boundary (at a sentence end when
/// one is close). `None` when not even the first word fits.
pub(super) fn fit_clip_window(tokenizer: &ClipTokenizer, text: &str) -> Option<String> {
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
