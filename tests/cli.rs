//! The real binary: `--help`, start-up banner, environment configuration, a
//! demo-room session with the printed token, and SIGTERM (twice: the second
//! ends the drain).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Client;
use flashcast_wire::{Encoding, Role, ServerMsg};

const BIN: &str = env!("CARGO_BIN_EXE_flashcast");

#[test]
fn help_documents_the_operator_options() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--listen",
        "FLASHCAST_LISTEN",
        "127.0.0.1:8080",
        "--data-dir",
        "FLASHCAST_DATA_DIR",
        "--admin-key",
        "FLASHCAST_ADMIN_KEY",
        "--config",
        "--history-len",
        "--max-frame-bytes",
        "--tick-ms",
        "--shutdown-drain-ms",
        "FLASHCAST_SHUTDOWN_DRAIN_MS",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
    let bad = Command::new(BIN).args(["--tick-ms", "0"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tick_ms"));
}

#[tokio::test]
async fn binary_prints_where_to_go_serves_the_demo_room_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("FLASHCAST_ADMIN_KEY", "key-from-env")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("viewer token:");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let banner = tokio::time::timeout(Duration::from_secs(30), banner)
        .await
        .unwrap()
        .unwrap();
    let find = |key: &str| {
        banner
            .iter()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("banner lacks {key}: {banner:#?}"))
            .clone()
    };
    assert!(find("admin key:").ends_with("key-from-env"));
    let base = find("is running at")
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    assert!(find("host the show:").contains(&format!("{base}/?room=demo#token=")));
    let host_token = find("host token:")
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();

    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let page = reqwest::get(format!("{base}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.to_lowercase().contains("<!doctype html"));

    let ws = format!("{}/ws", base.replace("http://", "ws://"));
    let mut host = Client::connect(&ws, Encoding::MsgPack).await;
    match host.join("demo", Some(&host_token), None).await {
        ServerMsg::Joined { you, .. } => assert_eq!(you.role, Role::Host),
        _ => unreachable!(),
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    host.expect_close(1012).await;
    // The drain (5 s by default): still listening, not ready.
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    // A second SIGTERM ends the drain at once.
    let again = std::time::Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap());
    let exit = tokio::time::timeout(Duration::from_secs(10), exit)
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "clean exit on SIGTERM: {exit:?}");
    assert!(
        again.elapsed() < Duration::from_secs(4),
        "the second SIGTERM cut the drain short ({:?})",
        again.elapsed()
    );
}
