//! Q&A: viewers ask and upvote; moderators answer and pin one question.

use std::collections::{HashMap, HashSet};

use super::Rejection;
use flashcast_wire::ids::{QuestionId, UserId};
use flashcast_wire::{ErrorCode, QuestionView, UserRef};

#[derive(Debug)]
struct Question {
    view: QuestionView,
    upvoters: HashSet<UserId>,
}

#[derive(Debug, Default)]
pub struct Questions {
    by_id: HashMap<QuestionId, Question>,
    next_id: u64,
    pinned: Option<QuestionId>,
}

fn not_found() -> Rejection {
    Rejection::new(ErrorCode::NotFound, "no such question")
}

impl Questions {
    /// Adds a question (text already cleaned).
    pub fn ask(
        &mut self,
        user: &UserRef,
        text: String,
        seq: flashcast_wire::ids::Seq,
        max_questions: usize,
    ) -> Result<QuestionView, Rejection> {
        if self.by_id.len() >= max_questions {
            return Err(Rejection::new(
                ErrorCode::LimitReached,
                "this room has reached its question limit",
            ));
        }
        self.next_id += 1;
        let view = QuestionView {
            id: QuestionId(self.next_id),
            seq,
            user: user.clone(),
            text,
            upvotes: 0,
            answer: None,
            deleted: false,
        };
        self.by_id.insert(
            view.id,
            Question {
                view: view.clone(),
                upvoters: HashSet::new(),
            },
        );
        Ok(view)
    }

    /// Returns the new upvote count.
    pub fn upvote(
        &mut self,
        id: QuestionId,
        user: &UserId,
        max_voters: usize,
    ) -> Result<u32, Rejection> {
        let q = self.by_id.get_mut(&id).ok_or_else(not_found)?;
        if q.upvoters.contains(user) {
            return Err(Rejection::new(
                ErrorCode::AlreadyUpvoted,
                "you already upvoted this question",
            ));
        }
        if q.upvoters.len() >= max_voters {
            return Err(Rejection::new(
                ErrorCode::LimitReached,
                "this question has reached its upvote limit",
            ));
        }
        q.upvoters.insert(user.clone());
        q.view.upvotes += 1;
        Ok(q.view.upvotes)
    }

    pub fn answer(&mut self, id: QuestionId, answer: String) -> Result<(), Rejection> {
        let q = self.by_id.get_mut(&id).ok_or_else(not_found)?;
        q.view.answer = Some(answer);
        Ok(())
    }

    pub fn pin(&mut self, id: Option<QuestionId>) -> Result<(), Rejection> {
        if let Some(id) = id {
            if !self.by_id.contains_key(&id) {
                return Err(not_found());
            }
        }
        self.pinned = id;
        Ok(())
    }

    pub fn pinned(&self) -> Option<QuestionId> {
        self.pinned
    }

    /// Removes a question (its `question_asked` event was deleted).
    pub fn remove(&mut self, id: QuestionId) {
        self.by_id.remove(&id);
        if self.pinned == Some(id) {
            self.pinned = None;
        }
    }

    /// Unanswered questions, most upvoted first, then oldest first.
    pub fn top(&self, n: usize) -> Vec<QuestionView> {
        let mut open: Vec<&QuestionView> = self
            .by_id
            .values()
            .map(|q| &q.view)
            .filter(|v| v.answer.is_none())
            .collect();
        open.sort_by(|a, b| b.upvotes.cmp(&a.upvotes).then(a.id.cmp(&b.id)));
        open.into_iter().take(n).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engage::test_viewer as user;

    #[test]
    fn ask_upvote_answer_pin() {
        let mut q = Questions::default();
        let a = q.ask(&user(1), "size?".into(), 1, 10).unwrap();
        let b = q.ask(&user(2), "colour?".into(), 1, 10).unwrap();
        assert_eq!(q.upvote(b.id, &user(3).id, 10).unwrap(), 1);
        assert_eq!(
            q.upvote(b.id, &user(3).id, 10).unwrap_err().code,
            ErrorCode::AlreadyUpvoted
        );
        assert_eq!(
            q.top(10).iter().map(|v| v.id).collect::<Vec<_>>(),
            vec![b.id, a.id]
        );
        q.answer(b.id, "blue".into()).unwrap();
        assert_eq!(q.top(10).len(), 1, "answered questions leave the open list");
        q.pin(Some(a.id)).unwrap();
        assert_eq!(q.pinned(), Some(a.id));
        assert_eq!(
            q.pin(Some(QuestionId(99))).unwrap_err().code,
            ErrorCode::NotFound
        );
        q.remove(a.id);
        assert_eq!(q.pinned(), None);
        q.ask(&user(1), "x".into(), 1, 10).unwrap();
        assert_eq!(
            q.ask(&user(1), "y".into(), 1, 2).unwrap_err().code,
            ErrorCode::LimitReached
        );
    }
}
