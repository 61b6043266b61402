//! Each room's batches as one JetStream subject, `<prefix>.<room token>`,
//! in one stream for the whole cluster.
//!
//! The owner appends every batch it flushes and shows it to no viewer
//! before JetStream acknowledged it. Each append names the subject's last
//! sequence it knows (`Nats-Expected-Last-Subject-Sequence`): a stale
//! owner, whose view of the subject is behind because a newer owner has
//! appended since, is refused (`Fenced`) and appends nothing. Each append
//! also carries a message id, `<epoch>:<first seq>`, so a retry after a
//! lost acknowledgement is recognised as a duplicate within the stream's
//! duplicate window instead of being stored twice.
//!
//! Edges, and a new owner restoring a room, read the subject from a stream
//! sequence on with an ordered consumer (no acks, gap-free, recreated by the
//! client if it falls behind).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, context, message::PublishMessage, stream};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::{subject_token, unavailable, ClusterError, ClusterResult};
use flashcast_wire::ids::RoomId;

/// How long JetStream remembers message ids to drop retried appends.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Limits of the rooms' stream.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Stream name (one per cluster).
    pub stream: String,
    /// Subject prefix; a room's subject is `<prefix>.<room token>`.
    pub prefix: String,
    /// Batches kept per room: older ones are dropped (resume then reports
    /// a gap, as on one node when the history ring has moved on).
    pub max_batches_per_room: i64,
    /// Oldest batch kept, whatever the count.
    pub max_age: Duration,
    /// Largest batch accepted (bytes).
    pub max_batch_bytes: i32,
}

/// The cluster's room log.
pub struct RoomLog {
    js: jetstream::Context,
    stream: stream::Stream,
    config: LogConfig,
}

/// One batch read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its stream sequence: what the next append names as the last one.
    pub sequence: u64,
    pub payload: Bytes,
}

impl RoomLog {
    /// Opens (creating if needed) the stream of `config`.
    pub async fn open(js: &jetstream::Context, config: LogConfig) -> ClusterResult<RoomLog> {
        assert!(config.max_batches_per_room > 0 && config.max_batch_bytes > 0);
        let stream = js
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                description: Some("Flashcast room batches, one subject per room".into()),
                subjects: vec![format!("{}.>", config.prefix)],
                max_messages_per_subject: config.max_batches_per_room,
                max_age: config.max_age,
                max_message_size: config.max_batch_bytes,
                duplicate_window: DUPLICATE_WINDOW,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        Ok(RoomLog {
            js: js.clone(),
            stream,
            config,
        })
    }

    fn subject(&self, room: &RoomId) -> String {
        format!("{}.{}", self.config.prefix, subject_token(room))
    }

    /// Appends one batch of `room`, whose events start at `first_seq` in
    /// `epoch`. `last` is the stream sequence of the room's previous batch
    /// as this owner knows it (0 for none). Returns the new batch's stream
    /// sequence; a retry of an append that was stored returns the stored
    /// one.
    pub async fn append(
        &self,
        room: &RoomId,
        epoch: u64,
        first_seq: u64,
        last: u64,
        payload: Bytes,
    ) -> ClusterResult<u64> {
        let publish = PublishMessage::build()
            .payload(payload)
            .message_id(format!("{epoch}:{first_seq}"))
            .expected_last_subject_sequence(last);
        let ack = self
            .js
            .send_publish(self.subject(room), publish)
            .await
            .map_err(publish_error)?
            .await
            .map_err(publish_error)?;
        Ok(ack.sequence)
    }

    /// The room's newest batch, if any.
    pub async fn last(&self, room: &RoomId) -> ClusterResult<Option<Entry>> {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject(room))
            .await
        {
            Ok(m) => Ok(Some(Entry {
                sequence: m.sequence,
                payload: m.payload,
            })),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The room's batches from stream sequence `from` on (1: all that are
    /// kept), in order, then each new one as it is appended.
    pub async fn read(
        &self,
        room: &RoomId,
        from: u64,
    ) -> ClusterResult<impl Stream<Item = ClusterResult<Entry>> + Send + use<>> {
        let consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subject(room),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let messages = consumer.messages().await.map_err(unavailable)?;
        Ok(messages.map(|m| {
            let m = m.map_err(unavailable)?;
            let sequence = m.info().map_err(unavailable)?.stream_sequence;
            Ok(Entry {
                sequence,
                payload: m.payload.clone(),
            })
        }))
    }

    /// Drops every batch of `room` (after its show ended).
    pub async fn delete(&self, room: &RoomId) -> ClusterResult<()> {
        self.stream
            .purge()
            .filter(self.subject(room))
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

fn publish_error(e: context::PublishError) -> ClusterError {
    match e.kind() {
        context::PublishErrorKind::WrongLastSequence => {
            ClusterError::Fenced("the room's log has moved on: another owner appended".into())
        }
        _ => unavailable(e),
    }
}
