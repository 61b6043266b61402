//! The load tester against a real Flashcast server started in this process:
//! real sockets, real joins, real chat, checked end to end.

use std::process::Command;

use clap::Parser;
use flashcast_storm::{run_chat, ChatArgs, Cli, RunOptions};

const BIN: &str = env!("CARGO_BIN_EXE_flashcast-storm");

struct TestServer {
    server: flashcast::Server,
    _dir: tempfile::TempDir,
}

async fn start_server() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let settings = flashcast::Settings::load_from([
        "flashcast",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
    ])
    .expect("valid settings");
    let server = flashcast::start(settings).await.expect("server starts");
    TestServer { server, _dir: dir }
}

fn chat_args(extra: &[&str]) -> ChatArgs {
    let mut argv = vec!["flashcast-storm", "chat"];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).expect("valid args").command {
        flashcast_storm::Command::Chat(a) => a,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_storm_delivers_every_chat_to_every_viewer_without_gaps() {
    let srv = start_server().await;
    let url = format!("ws://{}/ws", srv.server.addr);
    // 200 viewers from one address would exceed nothing (burst 500), but
    // use several to exercise the source-address spreading.
    let args = chat_args(&[
        "--url",
        &url,
        "--room",
        "demo",
        "--viewers",
        "200",
        "--senders",
        "20",
        "--rate",
        "20",
        "--duration",
        "3",
        "--drain",
        "1.5",
        "--join-rate",
        "400",
        "--source-ips",
        "4",
        "--quiet",
    ]);
    let report = run_chat(&args, &RunOptions::default())
        .await
        .expect("storm runs");
    srv.server.shutdown().await;

    assert_eq!(report.viewers_joined, 200, "{}", report.table());
    assert_eq!(report.chat_sent, 60, "{}", report.table());
    assert_eq!(report.chat_rejected, 0, "{}", report.table());
    assert_eq!(report.gaps, 0, "{}", report.table());
    assert_eq!(report.duplicates, 0, "{}", report.table());
    assert_eq!(report.viewers_complete, 200, "{}", report.table());
    assert_eq!(report.chat_events_received, 60 * 200);
    assert_eq!(report.per_viewer_chat.len(), 1);
    assert!(
        report.latency_ms.count >= 60 * 200,
        "{:?}",
        report.latency_ms
    );
    assert!(report.latency_ms.max >= report.latency_ms.p50);
    assert!(report.closes.is_empty(), "{:?}", report.closes);
    assert!(report.passed, "{:?}", report.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_processes_are_merged_and_criteria_set_the_exit_code() {
    let srv = start_server().await;
    let url = format!("ws://{}/ws", srv.server.addr);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("storm.json");
    let common = [
        "chat",
        "--url",
        &url,
        "--viewers",
        "60",
        "--senders",
        "6",
        "--rate",
        "6",
        "--duration",
        "2",
        "--drain",
        "1",
        "--workers",
        "2",
    ];
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(common).args(extra);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let ok = run(&["--out", out.to_str().unwrap()]).await.unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("PASS"), "{stdout}");
    assert!(stdout.contains("joined"), "no progress lines: {stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(report["viewers_joined"], 60);
    assert_eq!(report["chat_sent"], 12);
    assert_eq!(report["viewers_complete"], 60);
    assert_eq!(report["gaps"], 0);
    assert_eq!(report["duplicates"], 0);
    assert_eq!(report["latency_ms"]["count"], 12 * 60);

    // An impossible latency bound fails the run with exit code 1.
    let strict = run(&["--max-latency-ms", "0", "--quiet"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&strict.stdout);
    // Chat goes out once per tick, so nothing arrives in 0 ms.
    assert_eq!(strict.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL") && stdout.contains("--max-latency-ms"),
        "{stdout}"
    );
    srv.server.shutdown().await;
}

#[test]
fn bad_invocations_fail_with_a_clear_error() {
    let out = Command::new(BIN)
        .args(["chat", "--viewers", "5", "--senders", "10"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--senders (10) cannot exceed --viewers (5)"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["chat", "--viewers", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--viewers") && err.contains("many"), "{err}");

    let out = Command::new(BIN)
        .args(["chat", "--url", "http://x/ws"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ws:// URL"));

    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

#[tokio::test]
async fn an_unreachable_server_is_a_join_failure_not_a_hang() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let args = chat_args(&[
        "--url",
        &url,
        "--viewers",
        "3",
        "--senders",
        "0",
        "--rate",
        "0",
        "--duration",
        "0",
        "--drain",
        "0",
        "--join-retries",
        "0",
        "--quiet",
    ]);
    let report = run_chat(&args, &RunOptions::default()).await.unwrap();
    assert_eq!(report.viewers_joined, 0);
    assert!(!report.passed);
    assert!(report.failures[0].contains("only 0 of 3 viewers joined"));
    assert_eq!(report.join_failures.values().sum::<u64>(), 3);
}
