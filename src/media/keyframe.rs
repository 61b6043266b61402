//! Keyframe requests to a publisher. A viewer can only start decoding at a
//! keyframe, so one is asked for (an RTCP PLI to the publisher) whenever a
//! viewer connects and whenever a viewer reports loss with PLI or FIR.
//!
//! A thousand viewers joining in a second must not become a thousand PLIs
//! (each keyframe costs the publisher's uplink several times an ordinary
//! frame), and none of them may be left waiting for the encoder's next
//! periodic keyframe either. So requests go through a one-slot queue to a
//! pacer: at most one PLI per interval, and a request made during the
//! interval is merged into one PLI at its end, never dropped.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;

/// Why a keyframe was asked for (the `reason` label of
/// `flashcast_media_keyframe_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeReason {
    /// A viewer's connection came up.
    Join,
    /// A viewer's decoder sent a Picture Loss Indication.
    Pli,
    /// A viewer sent a Full Intra Request.
    Fir,
}

impl KeyframeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyframeReason::Join => "join",
            KeyframeReason::Pli => "pli",
            KeyframeReason::Fir => "fir",
        }
    }
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// A PLI will go out (now, or at the end of the current interval).
    Queued,
    /// A PLI was already pending; this request rides on it.
    Merged,
    /// The publisher is gone.
    Closed,
}

impl Requested {
    pub fn as_str(self) -> &'static str {
        match self {
            Requested::Queued => "queued",
            Requested::Merged => "merged",
            Requested::Closed => "closed",
        }
    }
}

/// The requesting side; cheap to clone, never waits.
#[derive(Clone)]
pub struct KeyframeGate {
    tx: mpsc::Sender<()>,
}

/// The sending side: one task per publisher video track.
pub struct KeyframePacer {
    rx: mpsc::Receiver<()>,
    interval: Duration,
}

/// A gate and its pacer, at most one PLI per `interval`.
pub fn keyframe_gate(interval: Duration) -> (KeyframeGate, KeyframePacer) {
    // One slot: a pending request. Everything beyond it is merged.
    let (tx, rx) = mpsc::channel(1);
    (KeyframeGate { tx }, KeyframePacer { rx, interval })
}

impl KeyframeGate {
    pub fn request(&self) -> Requested {
        match self.tx.try_send(()) {
            Ok(()) => Requested::Queued,
            Err(mpsc::error::TrySendError::Full(())) => Requested::Merged,
            Err(mpsc::error::TrySendError::Closed(())) => Requested::Closed,
        }
    }
}

impl KeyframePacer {
    /// Calls `send_pli` for each pending request, then rests for the
    /// interval; returns when every gate is dropped or `send_pli` returns
    /// false (the publisher is gone).
    pub async fn run<F, Fut>(mut self, mut send_pli: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        while self.rx.recv().await.is_some() {
            if !send_pli().await {
                break;
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_pli_now_and_one_at_the_end_of_the_interval() {
        let (gate, pacer) = keyframe_gate(Duration::from_millis(500));
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let task = tokio::spawn(pacer.run(move || {
            let c = counter.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                true
            }
        }));

        assert_eq!(gate.request(), Requested::Queued);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            sent.load(Ordering::SeqCst),
            1,
            "the first request goes out at once"
        );

        // A burst within the interval: one is queued, the rest merge into it.
        let outcomes: Vec<Requested> = (0..100).map(|_| gate.request()).collect();
        assert_eq!(outcomes[0], Requested::Queued);
        assert!(outcomes[1..].iter().all(|o| *o == Requested::Merged));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            sent.load(Ordering::SeqCst),
            1,
            "nothing more within the interval"
        );
        tokio::time::sleep(Duration::from_millis(101)).await;
        assert_eq!(
            sent.load(Ordering::SeqCst),
            2,
            "the merged requests: one PLI, on time"
        );

        // Quiet: no request, no PLI.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(sent.load(Ordering::SeqCst), 2);

        drop(gate);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_publisher_closes_the_gate() {
        let (gate, pacer) = keyframe_gate(Duration::from_millis(500));
        let task = tokio::spawn(pacer.run(|| async { false }));
        assert_eq!(gate.request(), Requested::Queued);
        task.await.unwrap();
        assert_eq!(gate.request(), Requested::Closed);
    }
}
