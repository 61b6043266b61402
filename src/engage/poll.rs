//! Polls and quizzes. One open poll per room; a vote per user; a quiz names
//! its first N correct voters when it closes.

use std::collections::HashSet;

use super::{text, Rejection};
use flashcast_wire::client::OpenPoll;
use flashcast_wire::ids::{PollId, UserId};
use flashcast_wire::{ErrorCode, EventBody, PollTally, PollView, UserRef};

/// Longest poll question or option, in characters.
pub const MAX_POLL_TEXT_CHARS: usize = 200;
/// Longest poll duration.
pub const MAX_POLL_SECS: u32 = 24 * 3600;
/// Most winners a quiz may name.
pub const MAX_QUIZ_WINNERS: u32 = 1_000;

#[derive(Debug)]
pub struct Poll {
    id: PollId,
    question: String,
    options: Vec<String>,
    correct: Option<u8>,
    winners_wanted: u32,
    winners: Vec<UserRef>,
    counts: Vec<u32>,
    voters: HashSet<UserId>,
    /// Unix ms of the automatic close.
    closes_at: Option<u64>,
    /// Counts changed since the last tally was published.
    dirty: bool,
}

impl Poll {
    pub fn open(
        id: PollId,
        spec: OpenPoll,
        max_options: usize,
        now_ms: u64,
    ) -> Result<Poll, Rejection> {
        let invalid = |m: &str| Rejection::new(ErrorCode::InvalidArgument, m);
        let question = text::clean(&spec.question, MAX_POLL_TEXT_CHARS)?;
        if spec.options.len() < 2 || spec.options.len() > max_options {
            return Err(invalid(&format!("a poll needs 2 to {max_options} options")));
        }
        let options = spec
            .options
            .iter()
            .map(|o| text::clean(o, MAX_POLL_TEXT_CHARS))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(c) = spec.correct {
            if c as usize >= options.len() {
                return Err(invalid("correct must be the index of an option"));
            }
        }
        let winners_wanted = match (spec.correct, spec.winners) {
            (None, Some(_)) => return Err(invalid("winners needs a quiz (correct)")),
            (_, Some(w)) if w > MAX_QUIZ_WINNERS => {
                return Err(invalid(&format!("at most {MAX_QUIZ_WINNERS} winners")))
            }
            (_, w) => w.unwrap_or(0),
        };
        let closes_at = match spec.duration_secs {
            Some(0) => return Err(invalid("duration_secs must be positive")),
            Some(s) if s > MAX_POLL_SECS => {
                return Err(invalid(&format!(
                    "duration_secs must be at most {MAX_POLL_SECS}"
                )))
            }
            Some(s) => Some(now_ms + s as u64 * 1_000),
            None => None,
        };
        Ok(Poll {
            id,
            question,
            counts: vec![0; options.len()],
            options,
            correct: spec.correct,
            winners_wanted,
            winners: Vec::new(),
            voters: HashSet::new(),
            closes_at,
            dirty: false,
        })
    }

    pub fn id(&self) -> PollId {
        self.id
    }

    pub fn vote(&mut self, user: &UserRef, option: u8, max_voters: usize) -> Result<(), Rejection> {
        let idx = option as usize;
        if idx >= self.options.len() {
            return Err(Rejection::new(ErrorCode::InvalidArgument, "no such option"));
        }
        if self.voters.contains(&user.id) {
            return Err(Rejection::new(
                ErrorCode::AlreadyVoted,
                "you already voted in this poll",
            ));
        }
        if self.voters.len() >= max_voters {
            return Err(Rejection::new(
                ErrorCode::LimitReached,
                "this poll has reached its voter limit",
            ));
        }
        self.voters.insert(user.id.clone());
        self.counts[idx] += 1;
        self.dirty = true;
        if self.correct == Some(option) && (self.winners.len() as u32) < self.winners_wanted {
            self.winners.push(user.clone());
        }
        Ok(())
    }

    pub fn due(&self, now_ms: u64) -> bool {
        self.closes_at.is_some_and(|t| now_ms >= t)
    }

    /// The tally to publish this tick, if votes arrived since the last one.
    pub fn take_tally(&mut self) -> Option<PollTally> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        Some(PollTally {
            poll_id: self.id,
            counts: self.counts.clone(),
        })
    }

    pub fn view(&self) -> PollView {
        PollView {
            id: self.id,
            question: self.question.clone(),
            options: self.options.clone(),
            quiz: self.correct.is_some(),
            closes_at: self.closes_at,
            counts: self.counts.clone(),
        }
    }

    /// Closes the poll, revealing the answer and winners of a quiz.
    pub fn close(self) -> EventBody {
        EventBody::PollClosed {
            poll_id: self.id,
            counts: self.counts,
            correct: self.correct,
            winners: self.winners,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engage::test_viewer as user;

    fn quiz() -> Poll {
        Poll::open(
            PollId(1),
            OpenPoll {
                question: "Which colour?".into(),
                options: vec!["red".into(), "blue".into(), "green".into()],
                correct: Some(1),
                winners: Some(2),
                duration_secs: Some(10),
            },
            10,
            1_000,
        )
        .unwrap()
    }

    #[test]
    fn one_vote_per_user_and_first_correct_win() {
        let mut p = quiz();
        p.vote(&user(1), 0, 100).unwrap();
        p.vote(&user(2), 1, 100).unwrap();
        assert_eq!(
            p.vote(&user(2), 2, 100).unwrap_err().code,
            ErrorCode::AlreadyVoted
        );
        p.vote(&user(3), 1, 100).unwrap();
        p.vote(&user(4), 1, 100).unwrap();
        assert_eq!(
            p.vote(&user(5), 9, 100).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(p.take_tally().unwrap().counts, vec![1, 3, 0]);
        assert!(
            p.take_tally().is_none(),
            "tally is only sent when it changed"
        );
        assert!(!p.view().counts.is_empty());
        assert!(p.due(11_000) && !p.due(10_999));
        match p.close() {
            EventBody::PollClosed {
                correct,
                winners,
                counts,
                ..
            } => {
                assert_eq!(correct, Some(1));
                assert_eq!(counts, vec![1, 3, 0]);
                let ids: Vec<_> = winners.iter().map(|w| w.id.to_string()).collect();
                assert_eq!(ids, vec!["u2", "u3"]);
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn voter_limit_and_bad_specs() {
        let mut p = quiz();
        p.vote(&user(1), 0, 1).unwrap();
        assert_eq!(
            p.vote(&user(2), 0, 1).unwrap_err().code,
            ErrorCode::LimitReached
        );
        let bad = Poll::open(
            PollId(2),
            OpenPoll {
                question: "q".into(),
                options: vec!["only".into()],
                correct: None,
                winners: None,
                duration_secs: None,
            },
            10,
            0,
        );
        assert_eq!(bad.unwrap_err().code, ErrorCode::InvalidArgument);
        let bad = Poll::open(
            PollId(3),
            OpenPoll {
                question: "q".into(),
                options: vec!["a".into(), "b".into()],
                correct: Some(2),
                winners: None,
                duration_secs: None,
            },
            10,
            0,
        );
        assert_eq!(bad.unwrap_err().code, ErrorCode::InvalidArgument);
    }
}
