//! Content rules. Length is counted in user-perceived characters (grapheme
//! clusters), so "👨‍👩‍👧" is one character and Korean or emoji chat gets the same
//! allowance as ASCII.

use unicode_segmentation::UnicodeSegmentation;

use super::Rejection;
use crate::limits::Limits;
use flashcast_wire::client::RoomMsg;
use flashcast_wire::ErrorCode;

/// Trims and checks a piece of user text: not empty, at most `max_chars`
/// characters, no control characters other than newline and tab.
pub fn clean(text: &str, max_chars: usize) -> Result<String, Rejection> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Rejection::new(ErrorCode::InvalidText, "text is empty"));
    }
    if trimmed
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Rejection::new(
            ErrorCode::InvalidText,
            "text contains control characters",
        ));
    }
    let chars = trimmed.graphemes(true).take(max_chars + 1).count();
    if chars > max_chars {
        return Err(Rejection::new(
            ErrorCode::InvalidText,
            format!("text is longer than {max_chars} characters"),
        ));
    }
    Ok(trimmed.to_string())
}

/// Cleans the user text of the actions that carry some, in place: chat to
/// `max_chat_chars`, questions, answers and announcements to
/// `max_text_chars`. The connection calls it before queueing an action, so
/// a room only ever sees clean text.
pub fn clean_action_text(msg: &mut RoomMsg, limits: &Limits) -> Result<(), Rejection> {
    use flashcast_wire::client::{Announce, Answer, Ask, Chat};
    match msg {
        RoomMsg::Chat(Chat { text }) => *text = clean(text, limits.max_chat_chars)?,
        RoomMsg::Ask(Ask { text })
        | RoomMsg::Announce(Announce { text })
        | RoomMsg::Answer(Answer { text, .. }) => *text = clean(text, limits.max_text_chars)?,
        _ => {}
    }
    Ok(())
}

/// A room's banned words: case-insensitive substring matches.
#[derive(Debug, Default, Clone)]
pub struct BannedWords {
    words: Vec<String>,
}

/// Longest banned word, in characters.
pub const MAX_BANNED_WORD_CHARS: usize = 64;

impl BannedWords {
    pub fn set(&mut self, words: Vec<String>, max_words: usize) -> Result<(), Rejection> {
        if words.len() > max_words {
            return Err(Rejection::new(
                ErrorCode::LimitReached,
                format!("at most {max_words} banned words"),
            ));
        }
        let mut cleaned = Vec::with_capacity(words.len());
        for w in words {
            let w = clean(&w, MAX_BANNED_WORD_CHARS)?;
            cleaned.push(w.to_lowercase());
        }
        cleaned.sort();
        cleaned.dedup();
        self.words = cleaned;
        Ok(())
    }

    pub fn check(&self, text: &str) -> Result<(), Rejection> {
        if self.words.is_empty() {
            return Ok(());
        }
        let lower = text.to_lowercase();
        if self.words.iter().any(|w| lower.contains(w.as_str())) {
            return Err(Rejection::new(
                ErrorCode::BannedWord,
                "message contains a banned word",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_graphemes_not_bytes() {
        // 5 Hangul syllables are 15 bytes; a family emoji is 18 bytes, one character.
        assert!(clean("안녕하세요", 5).is_ok());
        assert!(clean("안녕하세요!", 5).is_err());
        assert!(clean("👨‍👩‍👧👨‍👩‍👧", 2).is_ok());
        assert!(clean("👨‍👩‍👧👨‍👩‍👧👍", 2).is_err());
    }

    #[test]
    fn rejects_empty_and_control() {
        assert_eq!(clean("   ", 10).unwrap_err().code, ErrorCode::InvalidText);
        assert_eq!(
            clean("a\u{0007}b", 10).unwrap_err().code,
            ErrorCode::InvalidText
        );
        assert_eq!(clean(" hi\nthere ", 20).unwrap(), "hi\nthere");
    }

    #[test]
    fn banned_words_match_case_insensitively() {
        let mut b = BannedWords::default();
        b.set(vec!["Scam".into(), "사기".into()], 10).unwrap();
        assert!(b.check("what a SCAM site").is_err());
        assert!(b.check("이건 사기야").is_err());
        assert!(b.check("great deal").is_ok());
        assert_eq!(
            b.set(vec!["a".into(); 3], 2).unwrap_err().code,
            ErrorCode::LimitReached
        );
    }
}
