//! Who may speak: bans, timed mutes, slow mode and banned words. Moderators
//! and hosts are never muted, banned or slowed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::text::BannedWords;
use super::Rejection;
use flashcast_wire::ids::UserId;
use flashcast_wire::{ErrorCode, UserRef};

/// Longest mute.
pub const MAX_MUTE_SECS: u32 = 7 * 24 * 3600;
/// Longest slow-mode interval.
pub const MAX_SLOW_MODE_SECS: u32 = 3600;

/// A room's banned users. Only its `Moderation` changes it (on the room's
/// task); video, which does not go through the room's queue, reads it to
/// refuse and end a banned viewer's sessions (`RoomShared::is_banned`).
#[derive(Debug, Default)]
pub struct BanList(RwLock<HashSet<UserId>>);

impl BanList {
    pub fn new(users: impl IntoIterator<Item = UserId>) -> Self {
        Self(RwLock::new(users.into_iter().collect()))
    }

    pub fn contains(&self, user: &UserId) -> bool {
        self.read().contains(user)
    }

    // A panic while holding the lock cannot leave the set half-changed.
    fn read(&self) -> RwLockReadGuard<'_, HashSet<UserId>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashSet<UserId>> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Default)]
pub struct Moderation {
    bans: Arc<BanList>,
    /// User -> unix ms when the mute ends.
    mutes: HashMap<UserId, u64>,
    slow_mode_secs: u32,
    /// User -> unix ms of the last accepted chat, kept only while slow mode is on.
    last_chat: HashMap<UserId, u64>,
    pub banned_words: BannedWords,
}

impl Moderation {
    pub fn with_bans(bans: Arc<BanList>) -> Self {
        Self {
            bans,
            ..Self::default()
        }
    }

    pub fn is_banned(&self, user: &UserId) -> bool {
        self.bans.contains(user)
    }

    fn room_for_one_more(&self, max: usize) -> Result<(), Rejection> {
        if self.bans.read().len() + self.mutes.len() >= max {
            return Err(Rejection::new(
                ErrorCode::LimitReached,
                "too many muted and banned users in this room",
            ));
        }
        Ok(())
    }

    pub fn ban(&mut self, user: &UserId, max: usize) -> Result<(), Rejection> {
        if !self.bans.contains(user) {
            self.room_for_one_more(max)?;
            self.bans.write().insert(user.clone());
        }
        Ok(())
    }

    pub fn unban(&mut self, user: &UserId) -> bool {
        self.bans.write().remove(user)
    }

    /// Returns the unix ms when the mute ends.
    pub fn mute(
        &mut self,
        user: &UserId,
        seconds: u32,
        now_ms: u64,
        max: usize,
    ) -> Result<u64, Rejection> {
        if seconds == 0 || seconds > MAX_MUTE_SECS {
            return Err(Rejection::new(
                ErrorCode::InvalidArgument,
                format!("seconds must be 1 to {MAX_MUTE_SECS}"),
            ));
        }
        if !self.mutes.contains_key(user) {
            self.room_for_one_more(max)?;
        }
        let until = now_ms + seconds as u64 * 1_000;
        self.mutes.insert(user.clone(), until);
        Ok(until)
    }

    pub fn unmute(&mut self, user: &UserId) -> bool {
        self.mutes.remove(user).is_some()
    }

    pub fn set_slow_mode(&mut self, seconds: u32) -> Result<(), Rejection> {
        if seconds > MAX_SLOW_MODE_SECS {
            return Err(Rejection::new(
                ErrorCode::InvalidArgument,
                format!("slow mode is at most {MAX_SLOW_MODE_SECS} seconds"),
            ));
        }
        self.slow_mode_secs = seconds;
        if seconds == 0 {
            self.last_chat = HashMap::new();
        }
        Ok(())
    }

    pub fn slow_mode_secs(&self) -> u32 {
        self.slow_mode_secs
    }

    /// May this user post text (a chat message or a question) now?
    pub fn check_post(&self, user: &UserRef, text: &str, now_ms: u64) -> Result<(), Rejection> {
        if user.role.can_moderate() {
            return Ok(());
        }
        if self.bans.contains(&user.id) {
            return Err(Rejection::new(
                ErrorCode::Banned,
                "you are banned from this room",
            ));
        }
        if let Some(&until) = self.mutes.get(&user.id) {
            if until > now_ms {
                return Err(
                    Rejection::new(ErrorCode::Muted, "you are muted").retry_after(until - now_ms)
                );
            }
        }
        self.banned_words.check(text)
    }

    /// Slow mode applies to chat only; call after `check_post`, then
    /// `record_chat` once the message is accepted.
    pub fn check_slow_mode(&self, user: &UserRef, now_ms: u64) -> Result<(), Rejection> {
        if self.slow_mode_secs == 0 || user.role.can_moderate() {
            return Ok(());
        }
        if let Some(&last) = self.last_chat.get(&user.id) {
            let next = last + self.slow_mode_secs as u64 * 1_000;
            if next > now_ms {
                return Err(Rejection::new(
                    ErrorCode::SlowMode,
                    format!("slow mode: one message every {} s", self.slow_mode_secs),
                )
                .retry_after(next - now_ms));
            }
        }
        Ok(())
    }

    pub fn record_chat(&mut self, user: &UserRef, now_ms: u64) {
        if self.slow_mode_secs > 0 && !user.role.can_moderate() {
            self.last_chat.insert(user.id.clone(), now_ms);
        }
    }

    /// Forgets expired mutes and slow-mode entries, bounding both maps by
    /// the users active in the current window.
    pub fn prune(&mut self, now_ms: u64) {
        self.mutes.retain(|_, until| *until > now_ms);
        let window = self.slow_mode_secs as u64 * 1_000;
        self.last_chat.retain(|_, last| *last + window > now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashcast_wire::Role;
    use std::sync::Arc;

    fn user(n: &str, role: Role) -> UserRef {
        UserRef {
            id: UserId::new(n).unwrap(),
            name: Arc::from(n),
            role,
        }
    }

    #[test]
    fn mutes_expire_and_moderators_are_exempt() {
        let mut m = Moderation::default();
        let v = user("v", Role::Viewer);
        let h = user("h", Role::Host);
        m.mute(&v.id, 10, 1_000, 100).unwrap();
        m.mute(&h.id, 10, 1_000, 100).unwrap();
        let e = m.check_post(&v, "hi", 2_000).unwrap_err();
        assert_eq!((e.code, e.retry_after_ms), (ErrorCode::Muted, Some(9_000)));
        assert!(m.check_post(&h, "hi", 2_000).is_ok());
        assert!(m.check_post(&v, "hi", 11_000).is_ok());
        m.prune(11_000);
        assert!(m.mutes.is_empty());
    }

    #[test]
    fn slow_mode_and_limits() {
        let mut m = Moderation::default();
        let v = user("v", Role::Viewer);
        m.set_slow_mode(5).unwrap();
        m.check_slow_mode(&v, 0).unwrap();
        m.record_chat(&v, 0);
        assert_eq!(
            m.check_slow_mode(&v, 4_000).unwrap_err().retry_after_ms,
            Some(1_000)
        );
        assert!(m.check_slow_mode(&v, 5_000).is_ok());
        m.ban(&UserId::new("a").unwrap(), 1).unwrap();
        assert_eq!(
            m.ban(&UserId::new("b").unwrap(), 1).unwrap_err().code,
            ErrorCode::LimitReached
        );
        assert_eq!(
            m.check_post(&user("a", Role::Viewer), "x", 0)
                .unwrap_err()
                .code,
            ErrorCode::Banned
        );
        assert!(m.set_slow_mode(MAX_SLOW_MODE_SECS + 1).is_err());
    }
}
