//! Fan-out of one publisher track to its viewers, without decoding.
//!
//! The publisher's reader task hands each RTP packet to every viewer's
//! bounded queue with `try_send` and moves on: a full queue (a slow or dead
//! viewer) loses that packet, counted, and nothing else waits. Each viewer
//! has its own writer task per track that drains its queue into its own
//! peer connection, so the crypto and the socket writes of one viewer never
//! hold up another, nor the reader. Retransmissions (NACK) are answered by
//! each viewer connection's own NACK responder from what it sent.

use std::sync::{Arc, RwLock};

use rtc::rtp;
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::TrackLocal;

use super::SessionId;

/// What one `send` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub queued: usize,
    /// Viewers whose queue was full: they lose this packet.
    pub dropped: usize,
}

/// The viewers of one track. `P` is the packet type (RTP in the server;
/// anything cloneable in tests).
pub struct Fanout<P> {
    outputs: RwLock<Vec<(SessionId, mpsc::Sender<P>)>>,
    capacity: usize,
}

impl<P: Clone> Fanout<P> {
    /// `capacity`: packets each viewer may have waiting.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a viewer queue holds at least one packet");
        Self {
            outputs: RwLock::new(Vec::new()),
            capacity,
        }
    }

    /// Adds a viewer; its writer reads the returned queue. A viewer already
    /// subscribed is replaced.
    pub fn subscribe(&self, viewer: SessionId) -> mpsc::Receiver<P> {
        let (tx, rx) = mpsc::channel(self.capacity);
        let mut outputs = self.outputs.write().expect("fanout lock");
        outputs.retain(|(id, _)| *id != viewer);
        outputs.push((viewer, tx));
        rx
    }

    /// Removes a viewer: its writer sees its queue end once drained.
    pub fn unsubscribe(&self, viewer: &SessionId) {
        self.outputs
            .write()
            .expect("fanout lock")
            .retain(|(id, _)| id != viewer);
    }

    /// Offers a packet to every viewer without waiting for any of them.
    pub fn send(&self, packet: &P) -> Sent {
        let mut sent = Sent::default();
        let outputs = self.outputs.read().expect("fanout lock");
        for (_, tx) in outputs.iter() {
            match tx.try_send(packet.clone()) {
                Ok(()) => sent.queued += 1,
                Err(mpsc::error::TrySendError::Full(_)) => sent.dropped += 1,
                // The writer is gone; the viewer is being removed.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        sent
    }

    pub fn len(&self) -> usize {
        self.outputs.read().expect("fanout lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Readies a publisher packet for forwarding, once for all viewers: its
/// header extensions were negotiated with the publisher (ids differ per
/// connection, and a viewer's connection refuses ids it did not
/// negotiate), so they are removed.
pub fn strip_extensions(packet: &mut rtp::Packet) {
    packet.header.extension = false;
    packet.header.extension_profile = 0;
    packet.header.extensions.clear();
    packet.header.extensions_padding = 0;
}

/// One viewer's SSRC and payload type for a track: what the viewer's
/// connection announced and negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewerStream {
    pub ssrc: u32,
    pub payload_type: u8,
}

impl ViewerStream {
    /// Rewrites a forwarded packet for this viewer. Sequence numbers and
    /// timestamps stay the publisher's (one publisher per session).
    pub fn rewrite(&self, packet: &mut rtp::Packet) {
        packet.header.ssrc = self.ssrc;
        packet.header.payload_type = self.payload_type;
    }
}

/// The writer of one viewer track: drains the viewer's queue into its
/// connection until the queue ends (the viewer left the fan-out).
/// `on_written` gets each written packet's payload size. A packet the
/// connection refuses is skipped; the viewer's supervisor ends a viewer
/// whose connection is gone, which ends the queue.
pub async fn write_loop(
    mut queue: mpsc::Receiver<rtp::Packet>,
    track: Arc<dyn TrackLocal>,
    stream: ViewerStream,
    on_written: impl Fn(usize),
) {
    let mut refused = 0u64;
    while let Some(mut packet) = queue.recv().await {
        stream.rewrite(&mut packet);
        let bytes = packet.payload.len();
        match track.write_rtp(packet).await {
            Ok(()) => on_written(bytes),
            Err(e) => {
                refused += 1;
                if refused == 1 {
                    tracing::debug!(error = %e, "a viewer connection refused a packet");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> SessionId {
        SessionId::from_bytes([n; 16])
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_holding_up_others() {
        let fan: Fanout<u32> = Fanout::new(2);
        let mut slow = fan.subscribe(id(1));
        let mut fast = fan.subscribe(id(2));
        let mut fast_got = Vec::new();
        let mut total = Sent::default();
        for n in 0..5u32 {
            let s = fan.send(&n);
            total.queued += s.queued;
            total.dropped += s.dropped;
            while let Ok(p) = fast.try_recv() {
                fast_got.push(p);
            }
        }
        assert_eq!(
            fast_got,
            [0, 1, 2, 3, 4],
            "the reading viewer got everything"
        );
        // The slow one holds exactly its capacity: the first two.
        assert_eq!(slow.try_recv().ok(), Some(0));
        assert_eq!(slow.try_recv().ok(), Some(1));
        assert!(slow.try_recv().is_err());
        assert_eq!(
            total.dropped, 3,
            "5 sent, 2 queued, 3 dropped for the slow viewer"
        );
        assert_eq!(total.queued, 5 + 2);
    }

    #[test]
    fn unsubscribing_ends_the_queue_and_resubscribing_replaces() {
        let fan: Fanout<u32> = Fanout::new(4);
        let mut a = fan.subscribe(id(1));
        let _b = fan.subscribe(id(2));
        let mut a2 = fan.subscribe(id(1));
        assert_eq!(fan.len(), 2, "the same viewer twice is one output");
        assert!(a.try_recv().is_err());
        assert_eq!(fan.send(&7).queued, 2);
        assert_eq!(a2.try_recv().ok(), Some(7));
        fan.unsubscribe(&id(1));
        assert_eq!(fan.len(), 1);
        assert!(matches!(
            a2.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        // A dropped receiver is neither queued nor counted as a drop.
        drop(_b);
        assert_eq!(fan.send(&8), Sent::default());
    }

    #[test]
    fn packets_are_readied_once_and_rewritten_per_viewer() {
        let mut p = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                extension: true,
                extension_profile: 0xBEDE,
                extensions: vec![rtp::header::Extension {
                    id: 3,
                    payload: bytes::Bytes::from_static(&[1, 2]),
                }],
                payload_type: 96,
                sequence_number: 77,
                timestamp: 1234,
                ssrc: 1,
                ..Default::default()
            },
            payload: bytes::Bytes::from_static(&[9, 9, 9]),
        };
        strip_extensions(&mut p);
        assert!(!p.header.extension && p.header.extensions.is_empty());
        ViewerStream {
            ssrc: 42,
            payload_type: 102,
        }
        .rewrite(&mut p);
        assert_eq!((p.header.ssrc, p.header.payload_type), (42, 102));
        assert_eq!(
            (p.header.sequence_number, p.header.timestamp),
            (77, 1234),
            "sequence and timing are the publisher's"
        );
    }
}
