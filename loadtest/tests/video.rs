//! `flashcast-storm video` against a real Flashcast server started in this
//! process: a WHIP publisher and two WHEP viewers over real WebRTC (the
//! synthetic stream, so no encoder is needed), checked through the exit
//! code and the JSON report.

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_flashcast-storm");
const KEY: &str = "storm-video-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_whep_viewers_receive_the_stream_and_latency_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let settings = flashcast::Settings::load_from([
        "flashcast",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--admin-key",
        KEY,
    ])
    .expect("valid settings");
    let server = flashcast::start(settings).await.expect("server starts");
    let url = format!("http://{}", server.addr);
    let out_json = dir.path().join("video.json");
    let args: Vec<String> = [
        "video",
        "--url",
        &url,
        "--room",
        "bench",
        "--viewers",
        "2",
        "--ramp-secs",
        "0.5",
        "--duration",
        "3",
        "--connect-timeout",
        "8",
        "--server-pid",
        &std::process::id().to_string(),
        "--quiet",
        "--out",
        out_json.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(args)
            .env("FLASHCAST_ADMIN_KEY", KEY)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    server.shutdown().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("| viewers |"), "the table: {stdout}");

    let r: Value = serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    assert_eq!(r["viewers_receiving"], 2, "{r:#}");
    let viewers = r["per_viewer"].as_array().unwrap();
    assert_eq!(viewers.len(), 2);
    for v in viewers {
        // 3 s at ~270 packets/s: each viewer well over a few hundred.
        assert!(v["packets"].as_u64().unwrap() > 300, "{v}");
        assert!(v["first_packet_ms"].as_f64().is_some(), "{v}");
        let p50 = v["latency_p50_ms"].as_f64().expect("a latency figure");
        assert!(p50 > 0.0 && p50 < 1_000.0, "loopback latency: {v}");
    }
    let p99 = r["latency_p99_ms"].as_f64().expect("a latency figure");
    assert!(p99 > 0.0, "{r:#}");
    // The publisher sent about the configured 2.5 Mbit/s.
    let sent = r["sent_mbps"].as_f64().unwrap();
    assert!((2.0..3.2).contains(&sent), "sent {sent} Mbit/s");
    assert!(r["server_cpu_pct"].as_f64().is_some(), "{r:#}");
}

#[test]
fn an_unreachable_server_is_a_failed_run() {
    let out = Command::new(BIN)
        .args([
            "video",
            "--url",
            "http://127.0.0.1:9",
            "--viewers",
            "1",
            "--quiet",
        ])
        .env("FLASHCAST_ADMIN_KEY", KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
