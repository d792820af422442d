//! The rules for room ids and user names: trimmed, bounded in Unicode
//! scalar values, and free of characters that hide or disguise text.

/// Longest room id and user name, in Unicode scalar values after trimming.
pub const MAX_ROOM_CHARS: usize = 128;
pub const MAX_NAME_CHARS: usize = 64;

/// Control, bidi-override/isolate and zero-width characters.
fn is_refused(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' // zero-width space/joiners, LRM, RLM
            | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}' // bidi isolates
            | '\u{FEFF}' // zero-width no-break space
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
            "The {what} contains control, bidi-override or zero-width characters."
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
        ] {
            assert!(check("name", bad, 64).is_err(), "{bad:?}");
        }
        assert!(check("name", "Zoë 😀 김", 64).is_ok());
    }
}
