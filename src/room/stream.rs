//! The room's live-video state, as the media module last set it. Like the
//! shop (`market`), the room learns about it by looking each tick: the
//! media side stores one atomic word and never waits on the room, and the
//! actor turns a change into a sequenced `stream` event. Changes within one
//! tick are conflated (the latest state wins), as with stock counts.

use std::sync::atomic::{AtomicU64, Ordering};

use flashcast_wire::{StreamState, StreamStatus};

const LIVE: u64 = 1 << 63;

/// One word: 0 = never live on this run; else bit 63 = live, and the low
/// 63 bits the Unix ms of the change.
#[derive(Default)]
pub struct StreamSignal(AtomicU64);

impl StreamSignal {
    pub fn set(&self, state: StreamState, since_ms: u64) {
        let since = since_ms.clamp(1, LIVE - 1);
        let word = match state {
            StreamState::Live => LIVE | since,
            StreamState::Offline => since,
        };
        self.0.store(word, Ordering::Release);
    }

    /// None until the room has first gone live.
    pub fn get(&self) -> Option<StreamStatus> {
        let word = self.0.load(Ordering::Acquire);
        (word != 0).then_some(StreamStatus {
            state: if word & LIVE != 0 {
                StreamState::Live
            } else {
                StreamState::Offline
            },
            since: word & !LIVE,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_keeps_the_latest_state_and_time() {
        let s = StreamSignal::default();
        assert_eq!(s.get(), None);
        s.set(StreamState::Live, 1_767_261_600_000);
        assert_eq!(
            s.get(),
            Some(StreamStatus {
                state: StreamState::Live,
                since: 1_767_261_600_000
            })
        );
        s.set(StreamState::Offline, 1_767_261_700_000);
        assert_eq!(s.get().unwrap().state, StreamState::Offline);
        assert_eq!(s.get().unwrap().since, 1_767_261_700_000);
        s.set(StreamState::Offline, 0);
        assert!(s.get().is_some(), "a zero time never reads as 'never live'");
    }
}
