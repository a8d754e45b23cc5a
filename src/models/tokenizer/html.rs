//! HTML character references, decoded the way CPython 3.11's `html.unescape` and ftfy's
//! `unescape_html` fixer do (both are in open_clip's cleanup path). The entity table is the
//! WHATWG one, taken from the `htmlize` crate.

use htmlize::ENTITIES;

/// Longest name (after `&`) CPython looks at for a named reference.
const MAX_NAME_CHARS: usize = 32;

/// `html.unescape`: numeric references (with CPython's replacement rules), named references
/// with or without `;`, and the longest-legacy-prefix rule (`&notit;` -> `¬it;`).
/// (A decimal reference of more than 4300 digits makes CPython raise; here it is U+FFFD.)
pub(super) fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        match reference(after) {
            Some((consumed, replacement)) => {
                out.push_str(&replacement);
                rest = &after[consumed..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parses the reference that follows an `&`; returns bytes consumed and its replacement,
/// or `None` when CPython's pattern does not match there (the `&` is then kept).
fn reference(after: &str) -> Option<(usize, String)> {
    let bytes = after.as_bytes();
    if bytes.first() == Some(&b'#') {
        let (digits_start, radix) = match bytes.get(1) {
            Some(b'x' | b'X') => (2, 16),
            _ => (1, 10),
        };
        let digits = after[digits_start..]
            .bytes()
            .take_while(|b| {
                if radix == 16 {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
            .count();
        if digits == 0 {
            return None;
        }
        let mut end = digits_start + digits;
        if bytes.get(end) == Some(&b';') {
            end += 1;
        }
        let value = after[digits_start..digits_start + digits]
            .bytes()
            .try_fold(0u32, |acc, b| {
                let d = (b as char).to_digit(radix)?;
                acc.checked_mul(radix)?.checked_add(d)
            })
            .unwrap_or(u32::MAX);
        return Some((end, numeric_replacement(value)));
    }

    // Named: 1..=32 chars not in "\t\n\x0c <&#;", then an optional ';'.
    let mut name_end = 0;
    for (count, (i, c)) in after.char_indices().enumerate() {
        if count == MAX_NAME_CHARS
            || matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';')
        {
            break;
        }
        name_end = i + c.len_utf8();
    }
    if name_end == 0 {
        return None;
    }
    let mut end = name_end;
    if bytes.get(end) == Some(&b';') {
        end += 1;
    }
    let candidate = &after[..end];
    if let Some(v) = lookup(candidate) {
        return Some((end, v.to_string()));
    }
    // Longest prefix (at least two chars, shorter than the whole) that is an entity.
    let bounds: Vec<usize> = candidate.char_indices().map(|(i, _)| i).skip(2).collect();
    for &cut in bounds.iter().rev() {
        if let Some(v) = lookup(&candidate[..cut]) {
            return Some((end, format!("{v}{}", &candidate[cut..])));
        }
    }
    Some((end, format!("&{candidate}")))
}

/// Looks a name (without the leading `&`, with its `;` if any) up in the WHATWG table.
fn lookup(name: &str) -> Option<&'static str> {
    let mut key = Vec::with_capacity(name.len() + 1);
    key.push(b'&');
    key.extend_from_slice(name.as_bytes());
    ENTITIES
        .get(key.as_slice())
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// CPython's numeric rules: NUL and the C1 range follow Windows-1252, surrogates and
/// out-of-range values give U+FFFD, other non-characters/controls vanish.
fn numeric_replacement(n: u32) -> String {
    match n {
        0 => '\u{fffd}'.to_string(),
        0x0d => '\r'.to_string(),
        0x80..=0x9f => {
            let c = super::mojibake::windows_1252_c1(n as u8)
                .unwrap_or(char::from_u32(n).unwrap_or('\u{fffd}'));
            c.to_string()
        }
        0xd800..=0xdfff => '\u{fffd}'.to_string(),
        n if n > 0x10ffff => '\u{fffd}'.to_string(),
        0x01..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0xfdd0..=0xfdef => String::new(),
        n if n & 0xfffe == 0xfffe => String::new(),
        n => char::from_u32(n).map(String::from).unwrap_or_default(),
    }
}

/// ftfy's `unescape_html` fixer: only `&name;` / `&#..;` forms of 1..=24 ASCII
/// alphanumerics; named ones must be complete entities, or the all-caps spelling of a
/// lower-case entity (giving the upper-cased character); numeric ones go through
/// `html.unescape` and are kept as-is when that leaves a `;` behind.
pub(super) fn ftfy_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        match ftfy_reference_len(after) {
            Some(len) => {
                out.push_str(&ftfy_replacement(&after[..len]));
                rest = &after[len..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Length of a match of `&#?[0-9A-Za-z]{1,24};` at the start of `s`.
fn ftfy_reference_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 1;
    if b.get(i) == Some(&b'#') {
        i += 1;
    }
    let run = b[i..]
        .iter()
        .take(24)
        .take_while(|c| c.is_ascii_alphanumeric())
        .count();
    (run >= 1 && b.get(i + run) == Some(&b';')).then_some(i + run + 1)
}

fn ftfy_replacement(m: &str) -> String {
    if let Some(v) = ENTITIES
        .get(m.as_bytes())
        .and_then(|v| std::str::from_utf8(v).ok())
    {
        // Every key with a `;` is in ftfy's table.
        return v.to_string();
    }
    if m.starts_with("&#") {
        let un = unescape(m);
        return if un.contains(';') { m.to_string() } else { un };
    }
    // All-caps spelling of a lower-case entity, unless html.unescape would change it.
    let lower = m.to_ascii_lowercase();
    if m == lower.to_ascii_uppercase() && m != lower {
        if let Some(v) = ENTITIES
            .get(lower.as_bytes())
            .and_then(|v| std::str::from_utf8(v).ok())
        {
            if unescape(m) == m {
                return v.to_uppercase();
            }
        }
    }
    m.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_unescape_cases() {
        assert_eq!(
            unescape("&amp;amp; &lt;3 &quot;x&quot; &#39;"),
            "&amp; <3 \"x\" '"
        );
        assert_eq!(
            unescape("&notit; &ampx &amp &#x41 &#128; &#0; &#1;"),
            "¬it; &x & A € \u{fffd} "
        );
        assert_eq!(unescape("&bogus; & &; &#; &#xZ"), "&bogus; & &; &#; &#xZ");
        assert_eq!(unescape("&#99999999999999999999;"), "\u{fffd}");
    }

    #[test]
    fn ftfy_unescape_cases() {
        assert_eq!(
            ftfy_unescape("&amp;amp; &lt;3 &EACUTE; &LT; &#59; &#65; &amp"),
            "&amp; <3 É < &#59; A &amp"
        );
        assert_eq!(ftfy_unescape("&notit; &#x41;"), "&notit; A");
    }
}
