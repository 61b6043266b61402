//! The tool's own `/metrics` while a run goes on (`run --metrics-listen`),
//! in the Prometheus text format, so that one Grafana shows the server and
//! the load side by side: every counter of the summed worker progress as
//! `flashcast_storm_<name>_total`, and gauges for the viewers connected,
//! the delivery p99 and the seconds since go.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};

use crate::tally::Progress;

/// The registry and its metrics, updated from each progress tick.
pub struct LiveMetrics {
    registry: Registry,
    counters: Mutex<BTreeMap<String, IntCounter>>,
    connected: IntGauge,
    p99_ms: IntGauge,
    elapsed: IntGauge,
}

impl Default for LiveMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        LiveMetrics {
            connected: gauge(
                "flashcast_storm_viewers_connected",
                "Viewers connected and joined now",
            ),
            p99_ms: gauge(
                "flashcast_storm_delivery_p99_ms",
                "Delivery latency p99 so far (worst worker), ms",
            ),
            elapsed: gauge("flashcast_storm_elapsed_seconds", "Seconds since go"),
            counters: Mutex::default(),
            registry,
        }
    }
}

impl LiveMetrics {
    /// Takes the summed progress of every worker.
    pub fn update(&self, sum: &Progress, elapsed_secs: i64) {
        self.connected.set(sum.counts.connected() as i64);
        self.p99_ms.set(sum.p99_ms.unwrap_or(0) as i64);
        self.elapsed.set(elapsed_secs);
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(sum.counts) else {
            return;
        };
        let mut counters = self.counters.lock().expect("lock");
        for (name, value) in fields {
            let Some(v) = value.as_u64() else { continue };
            let c = counters.entry(name.clone()).or_insert_with(|| {
                let c = IntCounter::new(
                    format!("flashcast_storm_{name}_total"),
                    format!("{name} (flashcast-storm counter, all workers)"),
                )
                .expect("valid metric");
                self.registry.register(Box::new(c.clone())).expect("unique");
                c
            });
            // Progress is cumulative: add what is new.
            c.inc_by(v.saturating_sub(c.get()));
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).expect("utf-8")
    }
}

/// Serves `metrics` on `addr` (any path) until the returned task is
/// aborted. Returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<LiveMetrics>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-listen {addr}"))?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let body = metrics.render();
                    async move {
                        hyper::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_follow_the_progress_and_are_served() {
        let m = Arc::new(LiveMetrics::default());
        let mut p = Progress::default();
        p.counts.events = 10;
        p.counts.joined = 3;
        p.p99_ms = Some(42);
        m.update(&p, 1);
        p.counts.events = 25;
        m.update(&p, 2);
        let text = m.render();
        assert!(text.contains("flashcast_storm_events_total 25"), "{text}");
        assert!(
            text.contains("flashcast_storm_viewers_connected 3"),
            "{text}"
        );
        assert!(
            text.contains("flashcast_storm_delivery_p99_ms 42"),
            "{text}"
        );
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), m).await.unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        task.abort();
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.contains("flashcast_storm_events_total 25"), "{got}");
    }
}
