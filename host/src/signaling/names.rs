//! The rules for room ids and user names: trimmed, bounded in Unicode
//! scalar values, and free of characters that hide or disguise text.

/// Longest room id and user name, in Unicode scalar values after trimming.
pub const MAX_ROOM_CHARS: usize = 128;
pub const MAX_NAME_CHARS: usize = 64;

/// Control, bidi-override/isolate, zero-width and otherwise invisible
/// characters: a name must look like what it is.
fn is_refused(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' // soft hyphen
            | '\u{034F}' // combining grapheme joiner
            | '\u{061C}' // Arabic letter mark (bidi)
            | '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' // Hangul fillers
            | '\u{17B4}' | '\u{17B5}' // Khmer inherent vowels (invisible)
            | '\u{180E}' // Mongolian vowel separator
            | '\u{200B}'..='\u{200F}' // zero-width space/joiners, LRM, RLM
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
            | '\u{2060}'..='\u{206F}' // word joiner, invisible operators, bidi isolates, deprecated format
            | '\u{FEFF}' // zero-width no-break space
            | '\u{FFF9}'..='\u{FFFB}' // interlinear annotation
            | '\u{1D173}'..='\u{1D17A}' // musical formatting
            | '\u{E0000}'..='\u{E007F}' // tag characters
        )
}

/// Returns the trimmed name, or a sentence saying what is wrong with it.
pub fn check<'a>(what: &str, raw: &'a str, max_chars: usize) -> Result<&'a str, String> {
    let name = raw.trim();
    let len = name.chars().count();
    if len == 0 {
        return Err(format!("The {what} is empty."));
    }
    if len > max_chars {
        return Err(format!("The {what} is longer than {max_chars} characters."));
    }
    if name.chars().any(is_refused) {
        return Err(format!(
            "The {what} contains control, bidi-override or invisible characters."
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_bounds() {
        assert_eq!(check("room", "  lobby ", 128), Ok("lobby"));
        assert!(check("room", "   ", 128).is_err());
        assert!(check("name", &"가".repeat(64), 64).is_ok());
        assert!(check("name", &"가".repeat(65), 64).is_err());
    }

    #[test]
    fn refuses_hidden_characters() {
        for bad in [
            "a\u{0}b",
            "a\u{202E}b",
            "a\u{200B}b",
            "a\u{2066}b",
            "a\nb",
            "\u{FEFF}x",
            "a\u{061C}b",
            "a\u{2028}b",
            "a\u{2029}b",
            "a\u{034F}b",
            "\u{3164}",
            "a\u{115F}b",
            "a\u{FFA0}b",
            "a\u{E0041}\u{E007F}b",
            "a\u{2067}b",
            "a\u{00AD}b",
        ] {
            assert!(check("name", bad, 64).is_err(), "{bad:?}");
        }
        assert!(check("name", "Zoë 😀 김", 64).is_ok());
        // Emoji variation selectors are part of how emoji are written.
        assert!(check("name", "\u{2764}\u{FE0F}", 64).is_ok());
    }
}
