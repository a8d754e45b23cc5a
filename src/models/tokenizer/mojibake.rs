//! Mojibake detection and repair: the `fix_encoding` part of ftfy 6.3.1 (text that was
//! UTF-8 but got decoded with a single-byte code page, e.g. `Ã©` -> `é`, `â€™` -> `’`).
//!
//! The decision to touch a line at all follows ftfy's "badness" heuristic: a set of
//! character classes (accented letters, currency, punctuation that only appear together
//! in mojibake, ...) and the juxtapositions of them that are flagged. The classes below are
//! the ones ftfy uses, re-expressed as code-point ranges, so the same lines are repaired.
//! Re-encoding tries ftfy's code pages in ftfy's order (see [`super::codepages`]).

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::bytes::Regex as BytesRegex;
use regex::Regex;

use super::codepages::{CodePage, CODE_PAGES};

// Character classes of ftfy's badness heuristic, as regex class bodies.
const C1: &str = r"\x{80}-\x{9f}";
const COMMON: &str = r"\x{a0}\x{ad}\x{b4}\x{b7}\x{2013}-\x{2015}\x{2019}\x{2026}";
const BAD: &str = r"\x{a4}\x{a6}\x{a8}\x{aa}\x{ac}\x{af}\x{b8}\x{ba}\x{192}\x{2c6}\x{2c7}\x{2d8}\x{2db}\x{2dc}\x{2020}\x{2021}\x{2030}\x{2310}\x{25ca}\x{fffd}";
const LAW: &str = r"\x{a7}\x{b6}";
const CURRENCY: &str = r"\x{a2}\x{a3}\x{a5}\x{20a7}\x{20ac}";
const START_PUNCT: &str = r"\x{a1}\x{a9}\x{ab}\x{bf}\x{384}\x{385}\x{2018}\x{201a}\x{201c}\x{201e}\x{2022}\x{2039}\x{f8ff}";
const END_PUNCT: &str = r"\x{ae}\x{bb}\x{2dd}\x{201d}\x{203a}\x{2122}";
const NUMERIC: &str = r"\x{b1}-\x{b3}\x{b5}\x{b9}\x{bc}-\x{be}\x{d7}\x{f7}\x{2044}\x{2116}\x{2202}\x{2206}\x{220f}\x{2211}\x{221a}\x{221e}\x{2229}\x{222b}\x{2248}\x{2260}\x{2261}\x{2264}\x{2265}";
const KAOMOJI: &str =
    r"\x{b0}\x{d2}-\x{d6}\x{d9}-\x{dc}\x{f2}-\x{f6}\x{f8}-\x{fc}\x{14c}\x{150}\x{16a}\x{172}";
const UPPER_ACCENTED: &str = r"\x{c0}-\x{d1}\x{d8}\x{dc}\x{dd}\x{100}\x{102}\x{104}\x{106}\x{10c}\x{10e}\x{110}\x{112}\x{116}\x{118}\x{11a}\x{11e}\x{122}\x{12a}\x{130}\x{136}\x{139}\x{13b}\x{13d}\x{141}\x{143}\x{145}\x{147}\x{152}\x{158}\x{15a}\x{15e}\x{160}\x{162}\x{164}\x{16e}\x{170}\x{178}\x{179}\x{17b}\x{17d}\x{490}";
const LOWER_ACCENTED: &str = r"\x{df}-\x{f1}\x{fc}\x{101}\x{103}\x{105}\x{107}\x{10d}\x{10f}\x{111}\x{113}\x{117}\x{119}\x{11b}\x{11f}\x{123}\x{12b}\x{12f}\x{137}\x{13a}\x{13c}\x{13e}\x{142}\x{153}\x{155}\x{15b}\x{15f}\x{161}\x{165}\x{17a}\x{17c}\x{17e}\x{491}\x{fb01}\x{fb02}";
const UPPER_COMMON: &str =
    r"\x{de}\x{386}\x{388}-\x{38a}\x{38c}\x{38e}\x{38f}\x{391}-\x{3ab}\x{401}-\x{42f}";
const LOWER_COMMON: &str = r"\x{3ac}-\x{3c9}\x{430}-\x{45f}";
const BOX: &str = r"\x{2502}\x{250c}\x{2510}\x{2518}\x{251c}\x{2524}\x{252c}\x{253c}\x{2550}-\x{256c}\x{2580}\x{2584}\x{2588}\x{258c}\x{2590}-\x{2593}";
/// Python's `\s` (str.isspace) and `\w` (str.isalnum or `_`), which the heuristic uses.
const PY_SPACE: &str = r"\s\x{1c}-\x{1f}";
const PY_WORD: &str = r"\p{L}\p{N}_";

/// The flagged sequences; a line is "bad" when any of them occurs.
fn badness_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let rules = [
            format!("[{C1}]"),
            format!("[{BAD}{LOWER_ACCENTED}{UPPER_ACCENTED}{BOX}{START_PUNCT}{END_PUNCT}{CURRENCY}{NUMERIC}{LAW}][{BAD}]"),
            format!("[a-zA-Z][{LOWER_COMMON}{UPPER_COMMON}][{BAD}]"),
            format!("[{BAD}][{LOWER_ACCENTED}{UPPER_ACCENTED}{BOX}{START_PUNCT}{END_PUNCT}{CURRENCY}{NUMERIC}{LAW}]"),
            format!("[{LOWER_ACCENTED}{LOWER_COMMON}{BOX}{END_PUNCT}{CURRENCY}{NUMERIC}][{UPPER_ACCENTED}]"),
            format!("[{BOX}{END_PUNCT}{CURRENCY}{NUMERIC}][{LOWER_ACCENTED}]"),
            format!("[{LOWER_ACCENTED}{BOX}{END_PUNCT}][{CURRENCY}]"),
            format!("[{PY_SPACE}][{UPPER_ACCENTED}][{CURRENCY}]"),
            format!("[{UPPER_ACCENTED}{BOX}][{NUMERIC}{LAW}]"),
            format!("[{LOWER_ACCENTED}{UPPER_ACCENTED}{BOX}{CURRENCY}{END_PUNCT}][{START_PUNCT}][{NUMERIC}]"),
            format!("[{LOWER_ACCENTED}{UPPER_ACCENTED}{CURRENCY}{NUMERIC}{BOX}{LAW}][{END_PUNCT}][{START_PUNCT}]"),
            format!("[{CURRENCY}{NUMERIC}{BOX}][{START_PUNCT}]"),
            format!("[a-z][{UPPER_ACCENTED}][{START_PUNCT}{CURRENCY}]"),
            format!("[{BOX}][{KAOMOJI}]"),
            format!("[{LOWER_ACCENTED}{UPPER_ACCENTED}{CURRENCY}{NUMERIC}{START_PUNCT}{END_PUNCT}{LAW}][{BOX}]"),
            format!("[{BOX}][{END_PUNCT}]"),
            format!("[{LOWER_ACCENTED}{UPPER_ACCENTED}][{START_PUNCT}{END_PUNCT}][{PY_WORD}]"),
            // Œ/œ not followed by a plain Latin letter; degree sign after a capital.
            r"[\x{152}\x{153}][^A-Za-z]".to_string(),
            format!(r"[{UPPER_ACCENTED}]\x{{b0}}"),
            // Frequent two-character Windows-1252 mojibake.
            format!(r"[\x{{c2}}\x{{c3}}\x{{ce}}\x{{d0}}][\x{{20ac}}\x{{153}}\x{{160}}\x{{161}}\x{{a2}}\x{{a3}}\x{{178}}\x{{17e}}\x{{a0}}\x{{ad}}\x{{ae}}\x{{a9}}\x{{b0}}\x{{b7}}\x{{bb}}{START_PUNCT}{END_PUNCT}\x{{2013}}\x{{2014}}\x{{b4}}]"),
            r"\x{d7}[\x{b2}\x{b3}]".to_string(),
            // Arabic in Windows-1252: two pairs in a row.
            {
                let pair = format!(r"[\x{{d8}}\x{{d9}}][{COMMON}{CURRENCY}{BAD}{NUMERIC}{START_PUNCT}\x{{178}}\x{{160}}\x{{ae}}\x{{b0}}\x{{b5}}\x{{bb}}]");
                format!("{pair}{pair}")
            },
            // South Asian scripts in Windows-1252.
            r"\x{e0}[\x{b2}\x{b5}\x{b9}\x{bc}-\x{be}]".to_string(),
            // MacRoman.
            r"\x{221a}[\x{b1}\x{2202}\x{2020}\x{2260}\x{ae}\x{2122}\x{b4}\x{2264}\x{2265}\x{a5}\x{b5}\x{f8}]".to_string(),
            r"\x{2248}[\x{b0}\x{a2}]".to_string(),
            r"\x{201a}\x{c4}[\x{ec}\x{ee}\x{ef}\x{f2}\x{f4}\x{fa}\x{f9}\x{fb}\x{2020}\x{b0}\x{a2}\x{3c0}]".to_string(),
            r"\x{201a}[\x{e2}\x{f3}][\x{e0}\x{e4}\x{b0}\x{ea}]".to_string(),
            // Windows-1251.
            r"\x{432}\x{402}".to_string(),
            format!(r"[\x{{412}}\x{{413}}\x{{420}}\x{{421}}][{C1}{BAD}{START_PUNCT}{END_PUNCT}{CURRENCY}\x{{b0}}\x{{b5}}][\x{{412}}\x{{413}}\x{{420}}\x{{421}}]"),
            r"\x{413}\x{45e}\x{412}\x{402}\x{412}.[A-Za-z ]".to_string(),
            // Windows-1252 'à', 'á' and NBSP whose second byte was lost or turned into a space.
            r"\x{c3}[\x{a0}\x{a1}]".to_string(),
            format!(r"[a-z][{PY_SPACE}]?[\x{{c3}}\x{{c2}}] "),
            r"^[\x{c3}\x{c2}] ".to_string(),
            format!(r"[a-z.,?!{END_PUNCT}]\x{{c2}}[ {START_PUNCT}{END_PUNCT}]"),
            // Windows-1253.
            r"\x{3b2}\x{20ac}[\x{2122}\x{a0}\x{386}\x{ad}\x{ae}\x{b0}]".to_string(),
            format!(r"[\x{{392}}\x{{393}}\x{{39e}}\x{{39f}}][{C1}{BAD}{START_PUNCT}{END_PUNCT}{CURRENCY}\x{{b0}}][\x{{392}}\x{{393}}\x{{39e}}\x{{39f}}]"),
            // Windows-1257.
            r"\x{101}\x{20ac}".to_string(),
        ];
        Regex::new(&rules.join("|")).expect("badness regex is valid")
    })
}

/// ftfy's `is_bad`: does the text contain a sequence that is likely mojibake?
pub(super) fn is_bad(text: &str) -> bool {
    badness_re().is_match(text)
}

/// Windows-1252 characters for bytes 0x80..=0x9F (`None` where the code page has a hole).
pub(super) fn windows_1252_c1(b: u8) -> Option<char> {
    const TABLE: [u16; 32] = [
        0x20ac, 0, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160, 0x2039,
        0x0152, 0, 0x017d, 0, 0, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x02dc,
        0x2122, 0x0161, 0x203a, 0x0153, 0, 0x017e, 0x0178,
    ];
    match b {
        0x80..=0x9f => match TABLE[(b - 0x80) as usize] {
            0 => None,
            cp => char::from_u32(cp as u32),
        },
        _ => None,
    }
}

/// ftfy's "sloppy" Windows-1252: holes decode as the Latin-1 C1 control, 0x1A as U+FFFD.
fn sloppy_1252_decode(b: u8) -> char {
    match b {
        0x1a => '\u{fffd}',
        0x80..=0x9f => windows_1252_c1(b).unwrap_or(b as char),
        _ => b as char,
    }
}

/// Character -> byte maps of [`CODE_PAGES`], built once.
fn encoders() -> &'static [HashMap<char, u8>] {
    static MAPS: OnceLock<Vec<HashMap<char, u8>>> = OnceLock::new();
    MAPS.get_or_init(|| {
        CODE_PAGES
            .iter()
            .map(|&(_, sloppy, high): &CodePage| {
                let mut map: HashMap<char, u8> = (0u8..0x80)
                    .filter(|&b| b != 0x1a)
                    .map(|b| (b as char, b))
                    .collect();
                // Sloppy pages read 0x1A as U+FFFD; the others keep it as a control.
                map.insert(if sloppy { '\u{fffd}' } else { '\u{1a}' }, 0x1a);
                for (i, &cp) in high.iter().enumerate() {
                    if let Some(c) = char::from_u32(cp as u32) {
                        map.insert(c, 0x80 + i as u8);
                    }
                }
                map
            })
            .collect()
    })
}

/// One repair step; returns the input unchanged when nothing applies.
fn fix_encoding_step(text: &str) -> String {
    if text.is_empty() || text.is_ascii() || !is_bad(text) {
        return text.to_string();
    }
    let mut latin1_possible = false;
    for (&(name, sloppy, _), map) in CODE_PAGES.iter().zip(encoders()) {
        let Some(mut bytes) = text
            .chars()
            .map(|c| map.get(&c).copied())
            .collect::<Option<Vec<u8>>>()
        else {
            continue;
        };
        if name == "latin-1" {
            latin1_possible = true;
        }
        if name != "macroman" && altered_utf8_re().is_match(&bytes) {
            bytes = restore_byte_a0(&bytes);
        }
        if sloppy {
            bytes = lossy_utf8_re()
                .replace_all(&bytes, "\u{fffd}".as_bytes())
                .into_owned();
        }
        if let Some(fixed) = decode_utf8_variants(&bytes) {
            return fixed;
        }
    }

    if let Some(fixed) = decode_inconsistent_utf8(text) {
        if fixed != text {
            return fixed;
        }
    }

    if latin1_possible {
        // Latin-1 text whose C1 controls are really strict Windows-1252 characters.
        let strict: Option<String> = text
            .chars()
            .map(|c| match c as u32 {
                0x80..=0x9f => windows_1252_c1(c as u8),
                _ => Some(c),
            })
            .collect();
        if let Some(fixed) = strict {
            if fixed != text {
                return fixed;
            }
        }
    }

    fix_c1_controls(text)
}

/// ftfy's `fix_encoding`: repeat [`fix_encoding_step`] until nothing changes.
pub(super) fn fix_encoding(text: &str) -> String {
    let mut text = text.to_string();
    // ftfy loops until a fixed point; the cap only guards against pathological cycles.
    for _ in 0..64 {
        let next = fix_encoding_step(&text);
        if next == text {
            break;
        }
        text = next;
    }
    text
}

/// Replaces C1 controls by the Windows-1252 character of the same byte.
pub(super) fn fix_c1_controls(text: &str) -> String {
    text.chars()
        .map(|c| match c as u32 {
            0x80..=0x9f => sloppy_1252_decode(c as u8),
            _ => c,
        })
        .collect()
}

/// UTF-8 sequences in which a 0xA0 byte became a space (NBSP lost in transit).
fn altered_utf8_re() -> &'static BytesRegex {
    static RE: OnceLock<BytesRegex> = OnceLock::new();
    RE.get_or_init(|| {
        BytesRegex::new(
            r"(?-u)[\xc2\xc3\xc5\xce\xd0\xd9][ ]|[\xe2\xe3][ ][\x80-\x84\x86-\x9f\xa1-\xbf]|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf][ ]|[\xf0][ ][\x80-\xbf][\x80-\xbf]|[\xf0][\x80-\xbf][ ][\x80-\xbf]|[\xf0][\x80-\xbf][\x80-\xbf][ ]",
        )
        .expect("altered-utf8 regex is valid")
    })
}

/// Sequences that cannot be decoded because a byte was replaced by `?` or 0x1A; they become
/// U+FFFD instead of blocking the repair.
fn lossy_utf8_re() -> &'static BytesRegex {
    static RE: OnceLock<BytesRegex> = OnceLock::new();
    RE.get_or_init(|| {
        BytesRegex::new(
            r"(?-u)[\xc2-\xdf][\x1a]|[\xc2-\xc3][?]|\xed[\xa0-\xaf][\x1a?]\xed[\xb0-\xbf][\x1a?\x80-\xbf]|\xed[\xa0-\xaf][\x1a?\x80-\xbf]\xed[\xb0-\xbf][\x1a?]|[\xe0-\xef][\x1a?][\x1a\x80-\xbf]|[\xe0-\xef][\x1a\x80-\xbf][\x1a?]|[\xf0-\xf4][\x1a?][\x1a\x80-\xbf][\x1a\x80-\xbf]|[\xf0-\xf4][\x1a\x80-\xbf][\x1a?][\x1a\x80-\xbf]|[\xf0-\xf4][\x1a\x80-\xbf][\x1a\x80-\xbf][\x1a?]|\x1a",
        )
        .expect("lossy-utf8 regex is valid")
    })
}

/// Puts back the 0xA0 bytes that became spaces: first `Ã ` (an `à` whose second byte was
/// lost) unless followed by words where a real `Ã ` is plausible, then every
/// [`altered_utf8_re`] match.
fn restore_byte_a0(bytes: &[u8]) -> Vec<u8> {
    let mut step = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0xc3 && bytes.get(i + 1) == Some(&b' ') {
            let tail = &bytes[i + 2..];
            let keep = [&b" "[..], b"quele", b"quela", b"quilo", b"s "]
                .iter()
                .any(|w| tail.starts_with(w));
            if !keep {
                step.extend_from_slice(&[0xc3, 0xa0, b' ']);
                i += 2;
                continue;
            }
        }
        step.push(bytes[i]);
        i += 1;
    }
    altered_utf8_re()
        .replace_all(&step, |m: &regex::bytes::Captures| {
            m[0].iter()
                .map(|&b| if b == b' ' { 0xa0 } else { b })
                .collect::<Vec<u8>>()
        })
        .into_owned()
}

/// Strict UTF-8 plus the two variants ftfy accepts: CESU-8 surrogate pairs and `C0 80` for
/// NUL. `None` on any other invalid sequence.
fn decode_utf8_variants(bytes: &[u8]) -> Option<String> {
    if !bytes.contains(&0xed) && !bytes.contains(&0xc0) {
        return String::from_utf8(bytes.to_vec()).ok();
    }
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == 0xc0 && bytes.get(i + 1) == Some(&0x80) {
            out.push('\0');
            i += 2;
            continue;
        }
        if b == 0xed && i + 6 <= bytes.len() {
            let s = &bytes[i..i + 6];
            if (0xa0..=0xaf).contains(&s[1])
                && (0x80..=0xbf).contains(&s[2])
                && s[3] == 0xed
                && (0xb0..=0xbf).contains(&s[4])
                && (0x80..=0xbf).contains(&s[5])
            {
                let cp = (((s[1] & 0x0f) as u32) << 16)
                    + (((s[2] & 0x3f) as u32) << 10)
                    + (((s[4] & 0x0f) as u32) << 6)
                    + (s[5] & 0x3f) as u32
                    + 0x10000;
                out.push(char::from_u32(cp)?);
                i += 6;
                continue;
            }
        }
        let width = match b {
            0x00..=0x7f => 1,
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => return None,
        };
        let chunk = bytes.get(i..i + width)?;
        out.push_str(std::str::from_utf8(chunk).ok()?);
        i += width;
    }
    Some(out)
}

// Classes of ftfy's UTF-8 detector: characters that Latin-1/Windows-125x decodings of UTF-8
// lead bytes (2-, 3-, 4-byte sequences) and continuation bytes turn into.
fn first_of_2(c: char) -> bool {
    matches!(c as u32, 0xc2..=0xdf | 0x100 | 0x102 | 0x106 | 0x10c | 0x10e | 0x110 | 0x112 | 0x116
        | 0x118 | 0x11a | 0x11e | 0x122 | 0x12a | 0x130 | 0x136 | 0x139 | 0x13b | 0x141 | 0x143
        | 0x145 | 0x147 | 0x14c | 0x150 | 0x158 | 0x15a | 0x15e | 0x160 | 0x162 | 0x16a | 0x16e
        | 0x170 | 0x172 | 0x179 | 0x17b | 0x17d | 0x392..=0x3a1 | 0x3a3..=0x3af | 0x412..=0x42f)
}

fn first_of_3(c: char) -> bool {
    matches!(c as u32, 0xe0..=0xef | 0x101 | 0x103 | 0x105 | 0x107 | 0x10d | 0x10f | 0x113 | 0x117
        | 0x119 | 0x11b | 0x123 | 0x12b | 0x12f | 0x137 | 0x13a | 0x13c | 0x155 | 0x17a
        | 0x3b0..=0x3bf | 0x430..=0x43f)
}

fn first_of_4(c: char) -> bool {
    matches!(
        c as u32,
        0xf0 | 0xf3 | 0x111 | 0x11f | 0x161 | 0x3c0 | 0x3c3 | 0x440 | 0x443
    )
}

/// Continuation characters that cannot also be ordinary punctuation.
fn continuation_strict(c: char) -> bool {
    matches!(c as u32, 0x80..=0xbf | 0xc6 | 0xd8 | 0xe6 | 0xf8 | 0x104..=0x105 | 0x13d..=0x13e
        | 0x141..=0x142 | 0x152..=0x153 | 0x156..=0x157 | 0x15a..=0x15b | 0x15e..=0x161
        | 0x164..=0x165 | 0x178..=0x17e | 0x192 | 0x2c6..=0x2c7 | 0x2d8 | 0x2db..=0x2dd
        | 0x384..=0x386 | 0x388..=0x38a | 0x38c | 0x38e..=0x38f | 0x401..=0x40c | 0x40e..=0x40f
        | 0x451..=0x45c | 0x45e..=0x45f | 0x490..=0x491 | 0x2020..=0x2021 | 0x2030
        | 0x2039..=0x203a | 0x20ac | 0x2116 | 0x2122)
}

/// Continuation characters, also allowing a space (a lost NBSP) and common punctuation.
fn continuation(c: char) -> bool {
    continuation_strict(c)
        || matches!(c as u32, 0x20 | 0x2013..=0x2015 | 0x2018..=0x201a | 0x201c..=0x201e | 0x2022 | 0x2026)
}

/// End (exclusive) of the longest run of mojibake-looking UTF-8 sequences starting at `i`.
fn utf8_run_end(chars: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    while let Some(&c) = chars.get(j) {
        let n = if first_of_2(c) {
            1
        } else if first_of_3(c) {
            2
        } else if first_of_4(c) {
            3
        } else {
            break;
        };
        match chars.get(j + 1..j + 1 + n) {
            Some(cont) if cont.iter().all(|&c| continuation(c)) => j += 1 + n,
            _ => break,
        }
    }
    (j > i).then_some(j)
}

/// Repairs mojibake runs embedded in otherwise correct text (which as a whole cannot be
/// re-encoded). `None` if no candidate run exists.
fn decode_inconsistent_utf8(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut found = false;
    let mut i = 0;
    while i < chars.len() {
        let run = if i == 0 || !continuation_strict(chars[i - 1]) {
            utf8_run_end(&chars, i)
        } else {
            None
        };
        match run {
            Some(end) => {
                found = true;
                let sub: String = chars[i..end].iter().collect();
                if end - i < chars.len() && is_bad(&sub) {
                    out.push_str(&fix_encoding(&sub));
                } else {
                    out.push_str(&sub);
                }
                i = end;
            }
            None => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_common_mojibake() {
        assert_eq!(
            fix_encoding("mojibake: â€™ and Ã©tÃ©"),
            "mojibake: ’ and été"
        );
        assert_eq!(fix_encoding("cafÃ©"), "café");
        assert_eq!(fix_encoding("café, naïve"), "café, naïve");
        assert_eq!(fix_encoding("東京 Ã©tÃ©"), "東京 été");
        // Windows-1257 reading of UTF-8 'Ї' (D0 87).
        assert_eq!(fix_encoding("Š‡🐶"), "Ї🐶");
    }

    #[test]
    fn badness() {
        assert!(is_bad("Ã©"));
        assert!(!is_bad("café"));
        assert!(!is_bad("hello"));
    }
}
