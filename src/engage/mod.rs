//! Engagement features as plain state machines: no I/O, no clocks of their
//! own. The room actor owns one of each and turns their results into events.
//!
//! - `text`: content rules every chat message, question and answer passes.
//! - `poll`: polls and quizzes.
//! - `qa`: questions, upvotes, answers, the pinned question.
//! - `moderation`: mutes, bans, slow mode, the banned-word list.

pub mod moderation;
pub mod poll;
pub mod qa;
pub mod text;

use flashcast_wire::ErrorCode;

/// Why an action was refused; becomes an `error` frame for its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_ms: Option<u64>,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }
}

/// A viewer `u{n}`, for the engage modules' tests.
#[cfg(test)]
pub(crate) fn test_viewer(n: u32) -> flashcast_wire::UserRef {
    flashcast_wire::UserRef {
        id: flashcast_wire::ids::UserId::new(&format!("u{n}")).unwrap(),
        name: std::sync::Arc::from("x"),
        role: flashcast_wire::Role::Viewer,
    }
}
