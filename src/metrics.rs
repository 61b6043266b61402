//! Every Prometheus metric of a node, in one registry per server instance (so
//! tests can run several servers in one process).

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub rooms: IntGauge,
    pub viewers: IntGauge,
    /// Client messages accepted, by message type.
    pub events_in: IntCounterVec,
    /// Events delivered (events x receiving viewers), by event kind.
    pub events_out: IntCounterVec,
    /// Frames written to sockets (batches, snapshots, errors...).
    pub frames_out: IntCounter,
    pub bytes_out: IntCounter,
    pub fanout_batch_events: Histogram,
    pub fanout_batch_bytes: Histogram,
    pub queue_overflows: IntCounter,
    /// Rejected client frames or joins, by error code.
    pub rejected: IntCounterVec,
    /// Time to build, encode and hand out one batch.
    pub tick_seconds: Histogram,
    /// Time from a batch handed to the fanout until every worker has
    /// written it to its sockets (the room's fanout pace).
    pub fanout_seconds: Histogram,
    /// Cluster mode: time from a batch built until the journal (JetStream)
    /// acknowledged it; the batch is published only then.
    pub journal_seconds: Histogram,
    /// Cluster mode: journal appends that failed, by outcome (`unavailable`:
    /// retried; `fenced`: the room stepped down).
    pub journal_failures: IntCounterVec,
    /// Times a room found a fanout worker's queue full and waited
    /// (`fanout_queue`).
    pub fanout_queue_full: IntCounter,
    /// Batches handed out as soon as their first event arrived (the fanout
    /// was idle).
    pub batches_leading: IntCounter,
    /// io_uring submissions of fanout sends (`fanout_io_uring`).
    pub fanout_uring_submissions: IntCounter,
    /// Buys answered, by outcome (`reserved`, `existing`, or the error code).
    pub buys: IntCounterVec,
    /// Time from a buy's arrival to its answer, durable commit included.
    pub buy_seconds: Histogram,
    /// Order status changes: `paid`, `expired`, `cancelled`.
    pub order_changes: IntCounterVec,
    /// Coupon claims answered, by outcome.
    pub coupon_claims: IntCounterVec,
    /// Idempotency keys of committed buys held in memory.
    pub idempotency_keys: IntGauge,
    /// Buys whose key was not in memory and was looked up in the store.
    pub idempotency_store_lookups: IntCounter,
    /// Client actions written to recordings.
    pub recording_lines: IntCounter,
    /// Client actions not recorded because a recording queue was full.
    pub recording_dropped: IntCounter,
    /// Rooms recording now.
    pub recordings_active: IntGauge,
    /// Recordings ended, by what ended them.
    pub recording_stops: IntCounterVec,
    /// Video broadcasts (WHIP sessions) on this node, connecting or live.
    pub media_publishers: IntGauge,
    /// Video viewers (WHEP sessions) on this node.
    pub media_viewers: IntGauge,
    /// RTP packets written to viewers (packets x viewers), by `kind`.
    pub media_rtp_packets: IntCounterVec,
    /// RTP payload bytes written to viewers, by `kind`.
    pub media_rtp_bytes: IntCounterVec,
    /// Packets a viewer lost because its queue was full, by `kind`.
    pub media_queue_drops: IntCounterVec,
    /// Keyframe requests, by `reason` (join, pli, fir) and `outcome`
    /// (queued, merged into a pending one, closed).
    pub media_keyframe_requests: IntCounterVec,
    /// PLIs sent to publishers (after pacing).
    pub media_plis: IntCounter,
    /// WHIP/WHEP requests refused, by `reason`.
    pub media_refused: IntCounterVec,
    /// Sessions ended, by `kind` (publisher, viewer) and `reason`.
    pub media_sessions_ended: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("flashcast".into()), None).expect("static prefix is valid");
        let m = Metrics {
            connections: IntGauge::new("connections", "Open WebSocket connections").unwrap(),
            rooms: IntGauge::new("rooms", "Rooms on this node").unwrap(),
            viewers: IntGauge::new("viewers", "Connections joined to a room").unwrap(),
            events_in: IntCounterVec::new(
                Opts::new("events_in_total", "Client messages accepted, by type"),
                &["type"],
            )
            .unwrap(),
            events_out: IntCounterVec::new(
                Opts::new(
                    "events_out_total",
                    "Room events delivered to viewers, by kind",
                ),
                &["kind"],
            )
            .unwrap(),
            frames_out: IntCounter::new("frames_out_total", "Frames written to viewers").unwrap(),
            bytes_out: IntCounter::new("bytes_out_total", "Payload bytes written to viewers")
                .unwrap(),
            fanout_batch_events: Histogram::with_opts(
                HistogramOpts::new("fanout_batch_events", "Sequenced events per tick batch")
                    .buckets(exponential_buckets(1.0, 2.0, 12).unwrap()),
            )
            .unwrap(),
            fanout_batch_bytes: Histogram::with_opts(
                HistogramOpts::new("fanout_batch_bytes", "Encoded size of a tick batch")
                    .buckets(exponential_buckets(64.0, 2.0, 14).unwrap()),
            )
            .unwrap(),
            queue_overflows: IntCounter::new(
                "queue_overflows_total",
                "Viewers closed because their outbound queue overflowed",
            )
            .unwrap(),
            rejected: IntCounterVec::new(
                Opts::new("rejected_total", "Rejected client frames, by reason"),
                &["reason"],
            )
            .unwrap(),
            tick_seconds: Histogram::with_opts(
                HistogramOpts::new("tick_seconds", "Time to encode and publish one tick")
                    .buckets(exponential_buckets(0.000_01, 2.0, 16).unwrap()),
            )
            .unwrap(),
            fanout_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "fanout_seconds",
                    "Time from a batch handed to the fanout until every viewer's write is done",
                )
                .buckets(exponential_buckets(0.000_05, 2.0, 16).unwrap()),
            )
            .unwrap(),
            journal_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "journal_seconds",
                    "Time from a batch built until the room journal acknowledged it",
                )
                .buckets(exponential_buckets(0.000_05, 2.0, 16).unwrap()),
            )
            .unwrap(),
            journal_failures: IntCounterVec::new(
                Opts::new("journal_failures_total", "Failed room journal appends, by outcome"),
                &["outcome"],
            )
            .unwrap(),
            fanout_queue_full: IntCounter::new(
                "fanout_queue_full_total",
                "Times a room found a fanout worker's queue full and waited for room",
            )
            .unwrap(),
            fanout_uring_submissions: IntCounter::new(
                "fanout_uring_submissions_total",
                "io_uring submissions of fanout sends (up to 256 viewers each)",
            )
            .unwrap(),
            batches_leading: IntCounter::new(
                "batches_leading_total",
                "Batches handed to the fanout as soon as their first event arrived (the fanout was idle)",
            )
            .unwrap(),
            buys: IntCounterVec::new(
                Opts::new("buys_total", "Buys answered, by outcome"),
                &["outcome"],
            )
            .unwrap(),
            buy_seconds: Histogram::with_opts(
                HistogramOpts::new("buy_seconds", "Buy answer time, durable commit included")
                    .buckets(exponential_buckets(0.000_1, 2.0, 16).unwrap()),
            )
            .unwrap(),
            order_changes: IntCounterVec::new(
                Opts::new("order_changes_total", "Order status changes, by new status"),
                &["status"],
            )
            .unwrap(),
            coupon_claims: IntCounterVec::new(
                Opts::new("coupon_claims_total", "Coupon claims answered, by outcome"),
                &["outcome"],
            )
            .unwrap(),
            idempotency_keys: IntGauge::new(
                "idempotency_keys",
                "Idempotency keys of committed buys held in memory",
            )
            .unwrap(),
            idempotency_store_lookups: IntCounter::new(
                "idempotency_store_lookups_total",
                "Buys whose idempotency key was looked up in the store (not in memory)",
            )
            .unwrap(),
            recording_lines: IntCounter::new(
                "recording_lines_total",
                "Client actions written to recordings",
            )
            .unwrap(),
            recording_dropped: IntCounter::new(
                "recording_dropped_total",
                "Client actions not recorded because the recording queue was full",
            )
            .unwrap(),
            recordings_active: IntGauge::new("recordings_active", "Rooms recording now").unwrap(),
            recording_stops: IntCounterVec::new(
                Opts::new("recording_stops_total", "Recordings ended, by reason"),
                &["reason"],
            )
            .unwrap(),
            media_publishers: IntGauge::new(
                "media_publishers",
                "Video broadcasts (WHIP sessions), connecting or live",
            )
            .unwrap(),
            media_viewers: IntGauge::new("media_viewers", "Video viewers (WHEP sessions)").unwrap(),
            media_rtp_packets: IntCounterVec::new(
                Opts::new(
                    "media_rtp_packets_forwarded_total",
                    "RTP packets written to viewers (packets x viewers), by kind",
                ),
                &["kind"],
            )
            .unwrap(),
            media_rtp_bytes: IntCounterVec::new(
                Opts::new(
                    "media_rtp_bytes_forwarded_total",
                    "RTP payload bytes written to viewers, by kind",
                ),
                &["kind"],
            )
            .unwrap(),
            media_queue_drops: IntCounterVec::new(
                Opts::new(
                    "media_viewer_queue_drops_total",
                    "RTP packets a viewer lost because its queue was full, by kind",
                ),
                &["kind"],
            )
            .unwrap(),
            media_keyframe_requests: IntCounterVec::new(
                Opts::new(
                    "media_keyframe_requests_total",
                    "Keyframe requests for publishers, by reason and outcome",
                ),
                &["reason", "outcome"],
            )
            .unwrap(),
            media_plis: IntCounter::new("media_plis_sent_total", "PLIs sent to publishers")
                .unwrap(),
            media_refused: IntCounterVec::new(
                Opts::new(
                    "media_sessions_refused_total",
                    "WHIP/WHEP requests refused, by reason",
                ),
                &["reason"],
            )
            .unwrap(),
            media_sessions_ended: IntCounterVec::new(
                Opts::new(
                    "media_sessions_ended_total",
                    "Video sessions ended, by kind and reason",
                ),
                &["kind", "reason"],
            )
            .unwrap(),
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.connections.clone())).unwrap();
        r.register(Box::new(m.rooms.clone())).unwrap();
        r.register(Box::new(m.viewers.clone())).unwrap();
        r.register(Box::new(m.events_in.clone())).unwrap();
        r.register(Box::new(m.events_out.clone())).unwrap();
        r.register(Box::new(m.frames_out.clone())).unwrap();
        r.register(Box::new(m.bytes_out.clone())).unwrap();
        r.register(Box::new(m.fanout_batch_events.clone())).unwrap();
        r.register(Box::new(m.fanout_batch_bytes.clone())).unwrap();
        r.register(Box::new(m.queue_overflows.clone())).unwrap();
        r.register(Box::new(m.rejected.clone())).unwrap();
        r.register(Box::new(m.tick_seconds.clone())).unwrap();
        r.register(Box::new(m.fanout_seconds.clone())).unwrap();
        r.register(Box::new(m.journal_seconds.clone())).unwrap();
        r.register(Box::new(m.journal_failures.clone())).unwrap();
        r.register(Box::new(m.fanout_queue_full.clone())).unwrap();
        r.register(Box::new(m.batches_leading.clone())).unwrap();
        r.register(Box::new(m.fanout_uring_submissions.clone()))
            .unwrap();
        r.register(Box::new(m.buys.clone())).unwrap();
        r.register(Box::new(m.buy_seconds.clone())).unwrap();
        r.register(Box::new(m.order_changes.clone())).unwrap();
        r.register(Box::new(m.coupon_claims.clone())).unwrap();
        r.register(Box::new(m.idempotency_keys.clone())).unwrap();
        r.register(Box::new(m.idempotency_store_lookups.clone()))
            .unwrap();
        // CPU seconds, resident memory and open files of this process, so a
        // load tester on another machine can see what a storm costs.
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .unwrap();
        r.register(Box::new(m.recording_lines.clone())).unwrap();
        r.register(Box::new(m.recording_dropped.clone())).unwrap();
        r.register(Box::new(m.recordings_active.clone())).unwrap();
        r.register(Box::new(m.recording_stops.clone())).unwrap();
        r.register(Box::new(m.media_publishers.clone())).unwrap();
        r.register(Box::new(m.media_viewers.clone())).unwrap();
        r.register(Box::new(m.media_rtp_packets.clone())).unwrap();
        r.register(Box::new(m.media_rtp_bytes.clone())).unwrap();
        r.register(Box::new(m.media_queue_drops.clone())).unwrap();
        r.register(Box::new(m.media_keyframe_requests.clone()))
            .unwrap();
        r.register(Box::new(m.media_plis.clone())).unwrap();
        r.register(Box::new(m.media_refused.clone())).unwrap();
        r.register(Box::new(m.media_sessions_ended.clone()))
            .unwrap();
        m
    }

    pub fn reject(&self, reason: flashcast_wire::ErrorCode) {
        self.rejected.with_label_values(&[reason.as_str()]).inc();
    }

    /// The text exposition format served at /metrics.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to a Vec cannot fail");
        String::from_utf8(buf).expect("prometheus text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
