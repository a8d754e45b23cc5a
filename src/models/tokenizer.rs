//! CLIP byte-level BPE tokenizer reproducing `open_clip.tokenize` (open_clip_torch 2.22.0).
//!
//! The text encoder was trained on ids produced by that exact pipeline, so every step is
//! reproduced, including its quirks:
//!
//! 1. cleanup: a Rust subset of `ftfy.fix_text` (see [`ftfy`] for what is and is not covered),
//!    then Python's `html.unescape` twice, strip, every run of Unicode whitespace to one
//!    space, strip, lower-case;
//! 2. pre-tokenization with open_clip's case-insensitive regex (special tokens first,
//!    English contractions, letter runs, single digits, runs of other symbols), text that
//!    matches nothing (whitespace) is dropped;
//! 3. each piece is mapped byte-by-byte to printable characters (GPT-2/CLIP byte table) and
//!    run through BPE with the `</w>` end-of-word suffix; a piece that is exactly
//!    `<start_of_text>` / `<end_of_text>` becomes the special id;
//! 4. `[SOT] + ids + [EOT]`, cut to 77 with the last id forced to EOT, zero padded.
//!
//! Steps 2 and 3 use the `tokenizers` crate (Split + ByteLevel pre-tokenizers, BPE model);
//! the cleanup in step 1 is written by hand because no crate reproduces ftfy/Python.
//!
//! Besides the golden fixtures, this was checked against the Python reference on ~11k
//! generated prompts (mojibake through every ftfy code page, HTML entities, controls,
//! odd whitespace, all scripts): identical ids for every character assigned in Unicode 14
//! (Python 3.11's tables). Characters assigned later may be classified differently.

mod codepages;
mod ftfy;
mod html;
mod mojibake;

use std::io::Read;

use anyhow::{bail, Context, Result};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    Model, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior,
};

/// Number of ids the CLIP text encoder takes.
pub const CONTEXT_LENGTH: usize = 77;
/// `<start_of_text>` id.
pub const SOT: u32 = 49406;
/// `<end_of_text>` id.
pub const EOT: u32 = 49407;

const SOT_TEXT: &str = "<start_of_text>";
const EOT_TEXT: &str = "<end_of_text>";
/// Total vocabulary: 2 x 256 byte symbols, the merges, 2 specials.
const VOCAB_SIZE: usize = 49408;
/// open_clip keeps merge lines `1 .. 49152-256-2+1` of the file (line 0 is a header).
const MERGES_END_LINE: usize = 49152 - 256 - 2 + 1;

/// The standard CLIP BPE data, shipped unmodified as in the open_clip_torch wheel.
static BPE_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");

/// open_clip's pre-tokenization pattern, compiled by Python's `regex` module with
/// `IGNORECASE`. The specials come first so that they win over the symbol-run branch when a
/// piece starts with `<`. Case-insensitivity only changes matching for the literal branches
/// (e.g. `'ſ` matches `'s`), so it is scoped to them. For the classes, the one code point
/// whose behaviour differs is U+0345 (combining ypogegrammeni, case-folds to a letter):
/// under `IGNORECASE` Python matches it with no branch at all, so it is dropped like
/// whitespace; it is therefore excluded from the symbol class here.
const PRETOKENIZE_PATTERN: &str = r"(?i:<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d)|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}\x{345}]+";

/// Result of [`ClipTokenizer::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// Always [`CONTEXT_LENGTH`] ids: SOT, BPE ids, EOT, then zeros.
    pub ids: Vec<u32>,
    /// Number of non-padding ids (SOT and EOT included) after truncation.
    pub len: usize,
    /// Number of ids SOT + BPE + EOT would need without truncation.
    pub untruncated_len: usize,
}

impl TokenizedPrompt {
    /// True when the prompt did not fit and its tail was dropped.
    pub fn truncated(&self) -> bool {
        self.untruncated_len > self.len
    }
}

/// CLIP tokenizer with open_clip's exact behaviour; cheap to share (`Send + Sync`).
pub struct ClipTokenizer {
    pre_tokenizer: (Split, ByteLevel),
    bpe: BPE,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer").finish_non_exhaustive()
    }
}

impl ClipTokenizer {
    /// Builds the tokenizer from the embedded BPE asset.
    pub fn new() -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(BPE_GZ)
            .read_to_string(&mut text)
            .context("decompressing the embedded CLIP BPE merges")?;
        Self::from_merges_text(&text)
    }

    /// Builds vocab and merges the way open_clip's `SimpleTokenizer` does: the 256 byte
    /// symbols (in byte-table order), the same with `</w>`, one entry per merge (the two
    /// halves joined), then the two specials; ids are positions (a later duplicate wins).
    fn from_merges_text(text: &str) -> Result<Self> {
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() < MERGES_END_LINE {
            bail!(
                "CLIP BPE file has {} lines, expected at least {MERGES_END_LINE}",
                lines.len()
            );
        }
        let mut merges = Vec::with_capacity(MERGES_END_LINE - 1);
        for (n, line) in lines[1..MERGES_END_LINE].iter().enumerate() {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
                _ => bail!("malformed merge on line {}: {line:?}", n + 1),
            }
        }

        let byte_chars = byte_to_unicode();
        let mut ordered: Vec<String> = Vec::with_capacity(VOCAB_SIZE);
        ordered.extend(byte_chars.iter().map(|c| c.to_string()));
        ordered.extend(byte_chars.iter().map(|c| format!("{c}</w>")));
        ordered.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        ordered.push(SOT_TEXT.to_string());
        ordered.push(EOT_TEXT.to_string());
        if ordered.len() != VOCAB_SIZE {
            bail!(
                "CLIP vocab has {} entries, expected {VOCAB_SIZE}",
                ordered.len()
            );
        }
        let vocab: Vocab = ordered
            .into_iter()
            .enumerate()
            .map(|(id, tok)| (tok, id as u32))
            .collect();
        if vocab.get(SOT_TEXT) != Some(&SOT) || vocab.get(EOT_TEXT) != Some(&EOT) {
            bail!("CLIP special token ids are not {SOT}/{EOT}");
        }

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .end_of_word_suffix("</w>".to_string())
            .build()
            .map_err(|e| anyhow::anyhow!("building CLIP BPE model: {e}"))?;
        // `invert`: the pattern describes the pieces to keep; everything between them
        // (whitespace) is removed, as `re.findall` does.
        let split = Split::new(
            SplitPattern::Regex(PRETOKENIZE_PATTERN.to_string()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| anyhow::anyhow!("compiling the CLIP pre-tokenizer regex: {e}"))?;
        // Only the byte -> printable-char mapping, no extra regex split or prefix space.
        let byte_level = ByteLevel::new(false, false, false);
        Ok(Self {
            pre_tokenizer: (split, byte_level),
            bpe,
        })
    }

    /// Tokenizes one prompt exactly like `open_clip.tokenize([text])[0]`. Never panics.
    pub fn encode(&self, text: &str) -> TokenizedPrompt {
        let mut ids = Vec::with_capacity(CONTEXT_LENGTH);
        ids.push(SOT);
        ids.extend(self.bpe_ids(&clean_text(text)));
        ids.push(EOT);
        let untruncated_len = ids.len();
        if ids.len() > CONTEXT_LENGTH {
            ids.truncate(CONTEXT_LENGTH);
            ids[CONTEXT_LENGTH - 1] = EOT;
        }
        let len = ids.len();
        ids.resize(CONTEXT_LENGTH, 0);
        TokenizedPrompt {
            ids,
            len,
            untruncated_len,
        }
    }

    /// BPE ids of already-cleaned text (no SOT/EOT).
    fn bpe_ids(&self, cleaned: &str) -> Vec<u32> {
        let mut pretok = PreTokenizedString::from(cleaned);
        let (split, byte_level) = &self.pre_tokenizer;
        // Neither step can fail on valid UTF-8 input; fall back to "no ids" rather than panic.
        if split.pre_tokenize(&mut pretok).is_err() || byte_level.pre_tokenize(&mut pretok).is_err()
        {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (piece, _, _) in pretok.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            // Exact comparison: a case-folded look-alike matched by the regex is not special
            // in open_clip either (its special-token cache is keyed by the exact string).
            match piece {
                SOT_TEXT => out.push(SOT),
                EOT_TEXT => out.push(EOT),
                _ => match self.bpe.tokenize(piece) {
                    Ok(tokens) => out.extend(tokens.into_iter().map(|t| t.id)),
                    Err(_) => continue,
                },
            }
        }
        out
    }
}

/// open_clip's `whitespace_clean(basic_clean(text)).lower()`.
fn clean_text(text: &str) -> String {
    let fixed = ftfy::fix_text(text);
    let unescaped = html::unescape(&html::unescape(&fixed));
    // `basic_clean` strips with `str.strip()`, whose whitespace set also has U+001C..U+001F.
    let stripped = unescaped.trim_matches(is_python_space);
    // `re.sub(r'\s+', ' ', ..)` with the `regex` module: `\s` is Unicode White_Space,
    // which is exactly `char::is_whitespace`.
    let mut collapsed = String::with_capacity(stripped.len());
    let mut in_space = false;
    for c in stripped.chars() {
        if c.is_whitespace() {
            if !in_space {
                collapsed.push(' ');
            }
            in_space = true;
        } else {
            collapsed.push(c);
            in_space = false;
        }
    }
    // `str::to_lowercase` applies the full mappings and the final-sigma rule like `str.lower`.
    collapsed.trim_matches(is_python_space).to_lowercase()
}

/// Python's `str.isspace()`: Unicode White_Space plus the four information separators.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The CLIP/GPT-2 byte table in vocab order: printable Latin-1 bytes map to themselves and
/// come first (in byte order); the remaining bytes follow, mapped to U+0100 upwards.
fn byte_to_unicode() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut chars: Vec<char> = (0..256u32)
        .filter(|&b| printable(b))
        .filter_map(char::from_u32)
        .collect();
    let mut next = 256u32;
    for b in 0..256u32 {
        if !printable(b) {
            chars.extend(char::from_u32(next));
            next += 1;
        }
    }
    chars
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> ClipTokenizer {
        ClipTokenizer::new().unwrap()
    }

    #[test]
    fn empty_prompt_is_sot_eot() {
        let t = tok().encode("");
        assert_eq!(t.len, 2);
        assert_eq!(&t.ids[..3], &[SOT, EOT, 0]);
        assert_eq!(t.ids.len(), CONTEXT_LENGTH);
        assert!(!t.truncated());
    }

    #[test]
    fn truncation_keeps_eot() {
        let t = tok().encode(&"a ".repeat(200));
        assert_eq!(t.len, CONTEXT_LENGTH);
        assert_eq!(t.untruncated_len, 202);
        assert!(t.truncated());
        assert_eq!(t.ids[0], SOT);
        assert_eq!(t.ids[CONTEXT_LENGTH - 1], EOT);
        assert!(t.ids[1..CONTEXT_LENGTH - 1]
            .iter()
            .all(|&id| id != EOT && id != 0));
    }

    #[test]
    fn exactly_full_prompt_is_not_truncated() {
        // 75 words + SOT + EOT = 77
        let t = tok().encode(&"a ".repeat(75));
        assert_eq!((t.len, t.untruncated_len), (77, 77));
        assert!(!t.truncated());
    }

    #[test]
    fn special_tokens_in_text() {
        let t = tok().encode("<start_of_text><end_of_text>");
        assert_eq!(&t.ids[..4], &[SOT, SOT, EOT, EOT]);
    }

    #[test]
    fn no_panic_on_huge_prompt() {
        let tk = tok();
        let big = "a colourful ÿ 東京 🐶 &amp; Ã© \u{200b}\r\n".repeat(100 * 1024 / 40);
        assert!(big.len() >= 100 * 1024);
        let t = tk.encode(&big);
        assert_eq!(t.len, CONTEXT_LENGTH);
        let one_word = "x".repeat(100 * 1024);
        assert_eq!(tk.encode(&one_word).ids.len(), CONTEXT_LENGTH);
    }

    #[test]
    fn no_panic_on_random_bytes() {
        let tk = tok();
        // Small deterministic LCG so the test needs no extra crate.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for round in 0..200 {
            let n = 1 + round * 7 % 300;
            let bytes: Vec<u8> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 56) as u8
                })
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            let t = tk.encode(&text);
            assert_eq!(t.ids.len(), CONTEXT_LENGTH);
            assert!(t.len >= 2 && t.len <= CONTEXT_LENGTH);
        }
    }

    #[test]
    fn tokenizer_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ClipTokenizer>();
    }

    #[test]
    fn byte_table_matches_tokenizers_byte_level() {
        let table = byte_to_unicode();
        assert_eq!(table.len(), 256);
        let mut sorted = table.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
        assert_eq!(table[0], '!');
        assert_eq!(table[188], '\u{100}');
    }
}
