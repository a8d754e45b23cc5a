//! The part of `ftfy.fix_text` (ftfy 6.3.1, default settings) that open_clip's cleanup runs
//! on prompts.
//!
//! Implemented, in ftfy's order and repeated per line until nothing changes:
//! - HTML entity decoding (`&amp;`, `&#39;`, all-caps `&EACUTE;`), skipped from the first
//!   line containing `<` onwards, as ftfy does;
//! - mojibake repair for UTF-8 read through ftfy's ten single-byte code pages (Latin-1,
//!   Windows-1252/1251/1250/1253/1254/1257, ISO-8859-2, MacRoman, CP437), gated by ftfy's
//!   badness heuristic, with lost-NBSP restoration, lossy-sequence replacement, CESU-8,
//!   embedded mojibake runs and C1-control repair (see [`super::mojibake`]);
//! - Latin ligatures (`ﬁ` -> `fi`, Dutch/Serbo-Croatian digraphs);
//! - character width (full-width ASCII, half-width katakana, ideographic space);
//! - curly quotes to straight quotes;
//! - line breaks (`\r\n`, `\r`, U+2028/2029/0085 -> `\n`);
//! - ANSI terminal escapes and control / bidi-format / BOM / interlinear characters removed;
//! - NFC normalisation.
//!
//! Not implemented: `fix_surrogates` (a Rust `&str` cannot hold lone surrogates). Unicode tables are the Rust crates' (newer than the
//! Python 3.11 used to make the goldens), which only matters for recently added characters.

use std::sync::OnceLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use super::html;
use super::mojibake;

/// ftfy works on segments of at most this many characters (split at line ends first).
const MAX_SEGMENT_CHARS: usize = 1_000_000;
/// ftfy repeats its fixers until a fixed point; the cap only guards against cycles.
const MAX_PASSES: usize = 64;

/// `ftfy.fix_text(text)` with the default configuration, within the limits above.
pub(super) fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape_html = true;
    let mut rest = text;
    while !rest.is_empty() {
        let end = segment_end(rest);
        let (segment, tail) = rest.split_at(end);
        // ftfy turns entity decoding off for this and every later segment once it sees '<'.
        if unescape_html && segment.contains('<') {
            unescape_html = false;
        }
        out.push_str(&fix_segment(segment, unescape_html));
        rest = tail;
    }
    out
}

/// Byte length of the next segment: through the next '\n', at most MAX_SEGMENT_CHARS chars.
fn segment_end(s: &str) -> usize {
    for (count, (i, c)) in s.char_indices().enumerate() {
        if count == MAX_SEGMENT_CHARS {
            return i;
        }
        if c == '\n' {
            return i + 1;
        }
    }
    s.len()
}

fn fix_segment(segment: &str, unescape_html: bool) -> String {
    let mut text = segment.to_string();
    for _ in 0..MAX_PASSES {
        let before = text.clone();
        if unescape_html {
            text = html::ftfy_unescape(&text);
        }
        text = mojibake::fix_encoding(&text);
        text = mojibake::fix_c1_controls(&text);
        text = fix_latin_ligatures(&text);
        text = fix_character_width(&text);
        text = uncurl_quotes(&text);
        text = fix_line_breaks(&text);
        text = remove_terminal_escapes(&text);
        text = remove_control_chars(&text);
        text = text.nfc().collect();
        if text == before {
            break;
        }
    }
    text
}

fn fix_latin_ligatures(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let expansion = match c {
            'Ĳ' => "IJ",
            'ĳ' => "ij",
            'ŉ' => "\u{2bc}n",
            'Ǳ' => "DZ",
            'ǲ' => "Dz",
            'ǳ' => "dz",
            'Ǆ' => "D\u{17d}",
            'ǅ' => "D\u{17e}",
            'ǆ' => "d\u{17e}",
            'Ǉ' => "LJ",
            'ǈ' => "Lj",
            'ǉ' => "lj",
            'Ǌ' => "NJ",
            'ǋ' => "Nj",
            'ǌ' => "nj",
            'ﬀ' => "ff",
            'ﬁ' => "fi",
            'ﬂ' => "fl",
            'ﬃ' => "ffi",
            'ﬄ' => "ffl",
            'ﬅ' => "\u{17f}t",
            'ﬆ' => "st",
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push_str(expansion);
    }
    out
}

/// Half-/full-width forms (U+FF01..U+FFEF) to their compatibility (NFKC) form, and the
/// ideographic space to a plain space.
fn fix_character_width(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{3000}' => out.push(' '),
            '\u{ff01}'..='\u{ffef}' => out.extend(c.nfkc()),
            _ => out.push(c),
        }
    }
    out
}

fn uncurl_quotes(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{201c}'..='\u{201f}' => '"',
            '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
            _ => c,
        })
        .collect()
}

fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

fn remove_terminal_escapes(text: &str) -> String {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"\x1b\[[\d;]*[a-zA-Z]").expect("ANSI regex is valid"));
    re.replace_all(text, "").into_owned()
}

/// Drops C0 controls other than tab/LF/FF/CR, DEL, deprecated bidi format characters,
/// the BOM / zero-width no-break space, and interlinear annotation characters.
fn remove_control_chars(text: &str) -> String {
    text.chars()
        .filter(|&c| {
            !matches!(c as u32, 0x00..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0x206a..=0x206f | 0xfeff | 0xfff9..=0xfffc)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fix_text_cases() {
        assert_eq!(fix_text("ﬁne ﬀ ligatures"), "fine ff ligatures");
        assert_eq!(fix_text("full-width ＡＢＣ１２３"), "full-width ABC123");
        assert_eq!(
            fix_text("‘curly single’ and “curly double”"),
            "'curly single' and \"curly double\""
        );
        assert_eq!(fix_text("mojibake: â€™ and Ã©tÃ©"), "mojibake: ' and été");
        assert_eq!(fix_text("a\r\nb\rc"), "a\nb\nc");
        assert_eq!(fix_text("\x1b[31mred\x1b[0m\u{feff}"), "red");
        assert_eq!(fix_text("&amp;amp; x"), "& x");
        assert_eq!(fix_text("<b> &amp;\nnext &amp;"), "<b> &amp;\nnext &amp;");
        assert_eq!(fix_text("e\u{301}"), "é");
    }
}
