//! What a broadcast and a viewer have in common: their connection
//! ([`Link`]), the flag that ends them once (and wakes every task of
//! theirs), and the supervisor loop that follows their connection until
//! something ends them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::RTCPeerConnectionState;

use super::peer::{Peer, PeerEvents};
use super::{EndReason, MediaHub};

/// How often a supervisor looks at its timers.
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(250);

/// A session's end: set once, seen by every task of the session.
pub(crate) struct Ending {
    ending: AtomicBool,
    ended: watch::Sender<bool>,
}

impl Ending {
    pub fn new() -> Self {
        Self {
            ending: AtomicBool::new(false),
            ended: watch::channel(false).0,
        }
    }

    /// Marks the session ended; true only for the first caller, who then
    /// does the ending.
    pub fn begin(&self) -> bool {
        if self.ending.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.ended.send_replace(true);
        true
    }

    pub fn is_ended(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    /// Changes to `true` when the session ends.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.ended.subscribe()
    }

    /// The events `next` yields one after another until it yields `None`
    /// or the session ends: a session's reader loops.
    pub async fn each<T, F: std::future::Future<Output = Option<T>>>(
        &self,
        mut next: impl FnMut() -> F,
        mut on: impl FnMut(T) -> std::ops::ControlFlow<()>,
    ) {
        let mut ended = self.subscribe();
        loop {
            let event = tokio::select! {
                e = next() => e,
                _ = until_ended(&mut ended) => return,
            };
            let Some(event) = event else { return };
            if on(event).is_break() {
                return;
            }
        }
    }

    /// Runs `work` until it is done or the session ends.
    pub async fn run_until_ended(&self, work: impl std::future::Future<Output = ()>) {
        let mut ended = self.subscribe();
        tokio::select! {
            _ = work => {}
            _ = until_ended(&mut ended) => {}
        }
    }
}

/// A session's connection, its events (for its one supervisor) and its end.
pub(crate) struct Link {
    pub peer: Peer,
    events: Mutex<Option<PeerEvents>>,
    pub ending: Ending,
}

impl Link {
    pub fn new(peer: Peer, events: PeerEvents) -> Self {
        Self {
            peer,
            events: Mutex::new(Some(events)),
            ending: Ending::new(),
        }
    }

    /// Runs [`supervise`] (once: a second call returns `None` at once).
    pub async fn supervise(&self, session: &impl Supervised) -> Option<EndReason> {
        let mut events = self.events.lock().expect("events lock").take()?;
        supervise(session, &mut events, &self.ending).await
    }

    /// Closes the connection of a session that has ended as `role` (a
    /// label of `media_sessions_ended`).
    pub async fn close(&self, hub: &MediaHub, role: &str, reason: EndReason) {
        self.peer.close().await;
        hub.metrics
            .media_sessions_ended
            .with_label_values(&[role, reason.as_str()])
            .inc();
    }

    /// Ends and closes a session that was never registered (shutdown raced
    /// its start).
    pub async fn close_unregistered(&self) {
        self.ending.begin();
        self.peer.close().await;
    }
}

/// Resolves once the session has ended. (The guard `wait_for` returns is
/// dropped here, so callers' futures stay `Send`.)
pub(crate) async fn until_ended(ended: &mut watch::Receiver<bool>) {
    let _ = ended.wait_for(|e| *e).await;
}

/// What a supervisor does on its connection's events.
pub(crate) trait Supervised {
    /// The connection is up (again).
    fn connected(&self);
    /// A remote track opened (only a publisher's connection has any).
    fn track(&self, track: Arc<dyn TrackRemote>);
    /// Called every [`CHECK_EVERY`] with how long the connection has been
    /// disconnected, if it is; a reason ends the session.
    fn check(&self, disconnected_for: Option<Duration>) -> Option<EndReason>;
}

/// Follows a session's connection until it fails or closes (`Dropped`),
/// `check` names a reason, or the session is ended from elsewhere (`None`:
/// whoever ended it did the ending).
pub(crate) async fn supervise(
    session: &impl Supervised,
    events: &mut PeerEvents,
    ending: &Ending,
) -> Option<EndReason> {
    let mut ended = ending.subscribe();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    let mut disconnected_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = until_ended(&mut ended) => return None,
            changed = events.state.changed() => {
                if changed.is_err() {
                    return Some(EndReason::Dropped);
                }
                let state = *events.state.borrow_and_update();
                match state {
                    RTCPeerConnectionState::Connected => {
                        disconnected_at = None;
                        session.connected();
                    }
                    RTCPeerConnectionState::Disconnected => {
                        disconnected_at.get_or_insert_with(Instant::now);
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        return Some(EndReason::Dropped);
                    }
                    _ => {}
                }
            }
            Some(track) = events.tracks.recv() => session.track(track),
            _ = tick.tick() => {
                if let Some(reason) = session.check(disconnected_at.map(|t| t.elapsed())) {
                    return Some(reason);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_once() {
        let ending = Ending::new();
        let rx = ending.subscribe();
        assert!(!ending.is_ended());
        assert!(ending.begin(), "the first caller ends it");
        assert!(!ending.begin(), "a second caller does nothing");
        assert!(ending.is_ended());
        assert!(*rx.borrow());
    }

    #[tokio::test]
    async fn a_reader_stops_at_the_end_of_its_events_at_break_or_when_the_session_ends() {
        let ending = Ending::new();
        let read = |stop_at: u32, events: Vec<u32>| {
            let ending = &ending;
            async move {
                let mut events = events.into_iter();
                let mut seen = Vec::new();
                ending
                    .each(
                        || std::future::ready(events.next()),
                        |e| {
                            seen.push(e);
                            if e == stop_at {
                                std::ops::ControlFlow::Break(())
                            } else {
                                std::ops::ControlFlow::Continue(())
                            }
                        },
                    )
                    .await;
                seen
            }
        };
        assert_eq!(read(0, vec![1, 2, 3]).await, [1, 2, 3], "to the end");
        assert_eq!(read(2, vec![1, 2, 3]).await, [1, 2], "to a break");
        ending.begin();
        // An ended session's reader stops even while events keep coming.
        let pending = ending.each(std::future::pending::<Option<u32>>, |_| {
            std::ops::ControlFlow::Continue(())
        });
        tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("stops once the session has ended");
    }
}
