//! Scenario runs against a real Flashcast server started in this process:
//! real sockets, real tokens from the admin API, a real flash sale and
//! coupon drop checked against the durable orders.

use std::process::Command;

use flashcast_storm::scenario::Scenario;
use flashcast_storm::storm::{run, RunOptions};

const BIN: &str = env!("CARGO_BIN_EXE_flashcast-storm");
const KEY: &str = "storm-test-key";

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
        "--admin-key",
        KEY,
    ])
    .expect("valid settings");
    let server = flashcast::start(settings).await.expect("server starts");
    TestServer { server, _dir: dir }
}

fn opts() -> RunOptions {
    RunOptions {
        admin_key: Some(KEY.into()),
        server_pid: Some(std::process::id()),
        quiet: true,
        ..RunOptions::default()
    }
}

/// Every kind of phase, small: 300 signed-in viewers in two waves.
fn show(url: &str) -> String {
    format!(
        r#"
name = "mini-show"
[target]
url = "{url}"
room = "mini"
create_room = true
[viewers]
count = 300
auth = "token"
[load]
drain = 1.5
source_ips = 3
[[phase]]
type = "join"
at = 0
viewers = 200
over = 1
[[phase]]
type = "join"
at = 1.5
viewers = 100
over = 0.5
[[phase]]
type = "chat"
at = 2.5
duration = 4
rate = 20
senders = 20
[[phase]]
type = "reactions"
at = 2.5
duration = 4
rate = 100
senders = 50
kinds = ["heart", "clap"]
[[phase]]
type = "poll"
at = 2.5
voters = 100
over = 0.5
[[phase]]
type = "flash_sale"
at = 3
stock = 50
buyers = 300
within = 0.5
[[phase]]
type = "coupon_drop"
at = 4
count = 20
claimers = 100
within = 0.5
[[phase]]
type = "reconnect"
at = 5
fraction = 0.2
over = 0.5
[[phase]]
type = "questions"
at = 2.5
duration = 2
rate = 10
senders = 20
[[phase]]
type = "upvotes"
at = 5
voters = 150
within = 0.5
[pass]
max_buy_p99_ms = 5000
[[threshold]]
phase = 6
kind = "buy"
max_p99_ms = 5000
max_error_rate = 0
[[threshold]]
kind = "delivery"
max_p95_ms = 5000
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_show_runs_every_phase_and_passes() {
    let srv = start_server().await;
    let url = format!("http://{}", srv.server.addr);
    let s = Scenario::parse(&show(&url), "mini.toml").unwrap();
    let v = run(&s, &opts()).await.expect("the run is carried out");
    let table = v.table();
    srv.server.shutdown().await;

    assert!(v.passed, "{table}");
    let c = &v.counts;
    assert_eq!(c.joined, 300, "{table}");
    assert_eq!(
        (c.gaps, c.duplicates, c.decode_errors),
        (0, 0, 0),
        "{table}"
    );
    assert_eq!(c.chat_sent, 80, "{table}");
    assert_eq!(c.reactions_sent, 400, "{table}");
    assert_eq!(c.votes_sent, 100, "{table}");
    // Questions and upvotes: 20 asked, 150 upvotes of the newest, none
    // refused (the unexpected-error criterion held).
    assert_eq!(c.asks_sent, 20, "{table}");
    assert_eq!((c.upvotes_sent, c.upvotes_skipped), (150, 0), "{table}");
    // The flash sale: exactly the stock, nobody twice, in the durable store.
    assert_eq!(c.buys_sent, 300, "{table}");
    assert_eq!(c.buys_accepted, 50, "{table}");
    assert_eq!(v.buy_refusals.get("sold_out"), Some(&250), "{table}");
    assert_eq!(v.sales.len(), 1);
    assert_eq!(v.sales[0].stored_units, 50, "{table}");
    assert_eq!(v.sales[0].available, Some(0), "{table}");
    // Coupons: first come, exactly the drop.
    assert_eq!(c.claims_sent, 100, "{table}");
    assert_eq!(c.claims_won, 20, "{table}");
    assert_eq!(v.claim_refusals.get("coupons_gone"), Some(&80), "{table}");
    // 20% of 300 reconnected and got exactly what they missed.
    assert_eq!(c.reconnects, 60, "{table}");
    assert_eq!(c.resumed, 60, "{table}");
    // Every chat message reached every viewer joined at the time: each of
    // the 300 viewers saw the 80 chats (plus other events).
    assert!(c.events >= 300 * 80, "{table}");
    // Thresholds: the sale's buys judged on the sale's seconds.
    assert_eq!(v.thresholds.len(), 2, "{table}");
    let buy = &v.thresholds[0];
    assert!(
        buy.passed && buy.name.contains("phase 6 flash_sale"),
        "{buy:?}"
    );
    assert_eq!(buy.from_s, 3);
    assert!(buy.count > 0 && buy.count <= 300, "{buy:?}");
    assert_eq!(buy.error_rate, Some(0.0));
    assert!(v.thresholds[1].count >= 300 * 80, "{:?}", v.thresholds[1]);
    // The 400 reactions reach the viewers as per-tick counts, not events.
    assert!(c.reactions_received >= 200 * 400, "{table}");
    assert!(table.contains("reactions received"), "{table}");
    assert!(
        v.latency_ms.count > 0 && v.latency_ms.p99 < 5_000,
        "{table}"
    );
    // Chat timed from the sender's clock on every 10th viewer (30 of 300),
    // each seeing at most the 80 messages.
    assert!(
        (80..=30 * 80).contains(&v.chat_ms.count) && v.chat_ms.p99 < 5_000,
        "{table}"
    );
    assert!(table.contains("chat, sender to viewer"), "{table}");
    // Server figures came from /proc (this process) and /metrics.
    assert_eq!(v.server.source, "proc", "{table}");
    assert!(v.server.cpu_secs.is_some(), "{table}");
    assert!(
        v.server.metrics_delta["flashcast_events_out_total"] > 0.0,
        "{table}"
    );
    // Per-second figures line up with the totals.
    let per_sec: u64 = v.seconds.iter().map(|s| s.events).sum();
    assert_eq!(per_sec, c.events);
    assert!(v.seconds.iter().any(|s| s.buys_accepted > 0));
    assert!(v.seconds.iter().any(|s| s.p99_ms.is_some()));

    // Both reports are written; the HTML has its charts.
    let dir = tempfile::tempdir().unwrap();
    v.write_json(&dir.path().join("r.json")).unwrap();
    v.write_html(&dir.path().join("r.html")).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(json["counts"]["buys_accepted"], 50);
    assert_eq!(json["passed"], true);
    let html = std::fs::read_to_string(dir.path().join("r.html")).unwrap();
    assert!(html.matches("<svg").count() >= 4, "charts missing");
    assert!(html.contains("PASS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_processes_merge_and_a_failed_criterion_exits_1() {
    let srv = start_server().await;
    let url = format!("http://{}", srv.server.addr);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("strict.toml");
    // A criterion no real run meets: delivery within 0 ms.
    let text = format!(
        r#"
name = "strict"
[target]
url = "{url}"
[viewers]
count = 120
[load]
workers = 3
drain = 1
[[phase]]
type = "join"
at = 0
viewers = 120
over = 1
[[phase]]
type = "chat"
at = 1.5
duration = 2
rate = 10
senders = 10
[pass]
max_p99_ms = 0
[[threshold]]
phase = 2
kind = "delivery"
max_p95_ms = 0
"#
    );
    std::fs::write(&file, text).unwrap();
    let out_json = dir.path().join("out.json");
    let bin = BIN.to_string();
    let args = vec![
        "run".to_string(),
        file.to_str().unwrap().into(),
        "--quiet".into(),
        "--out".into(),
        out_json.to_str().unwrap().into(),
        "--csv".into(),
        dir.path().join("s.csv").to_str().unwrap().into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
    ];
    let out = tokio::task::spawn_blocking(move || Command::new(bin).args(args).output().unwrap())
        .await
        .unwrap();
    srv.server.shutdown().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("FAIL: p99 delivery latency"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("flashcast-storm metrics on http://127.0.0.1:"),
        "{stderr}"
    );
    // The per-second CSV: a header and a row per second of the report.
    let csv = std::fs::read_to_string(dir.path().join("s.csv")).unwrap();
    assert!(csv.starts_with("t,viewers,events,"), "{csv}");
    let events: u64 = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(events >= 20 * 100, "{csv}");
    assert!(
        stdout.contains("threshold 1 (delivery, phase 2 chat): p95 delivery"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
    // `diff`: a report against itself is no regression; against a copy
    // with twice the p99 it is (exit 1, HTML written); junk is exit 2.
    let same = Command::new(BIN)
        .arg("diff")
        .args([&out_json, &out_json])
        .output()
        .unwrap();
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
    let mut worse = json.clone();
    worse["latency_ms"]["p99"] =
        serde_json::json!(json["latency_ms"]["p99"].as_u64().unwrap() * 2 + 10);
    let worse_path = dir.path().join("worse.json");
    std::fs::write(&worse_path, serde_json::to_vec(&worse).unwrap()).unwrap();
    let page = dir.path().join("diff.html");
    let diff = Command::new(BIN)
        .arg("diff")
        .args([&out_json, &worse_path])
        .arg("--html")
        .arg(&page)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&diff.stdout);
    assert_eq!(diff.status.code(), Some(1), "{text}");
    assert!(
        text.contains("delivery p99 ms") && text.contains("REGRESSION"),
        "{text}"
    );
    assert!(std::fs::read_to_string(&page)
        .unwrap()
        .contains("regression(s)"));
    let junk = Command::new(BIN)
        .arg("diff")
        .args([&out_json, &dir.path().join("s.csv")])
        .output()
        .unwrap();
    assert_eq!(junk.status.code(), Some(2));
    // The threshold applied, its bound and the value found, in the report;
    // the chat's delivery came from three processes, merged per second.
    let t = &json["thresholds"][0];
    assert_eq!(t["threshold"]["max_p95_ms"], 0, "{t}");
    assert_eq!(t["passed"], false, "{t}");
    assert!(t["p95_ms"].as_u64().unwrap() > 0, "{t}");
    assert!(t["count"].as_u64().unwrap() >= 20 * 100, "{t}");
    // Three processes' results merged into one.
    assert_eq!(json["workers"], 3);
    // No --server-pid: the server's CPU and memory came from its /metrics.
    assert_eq!(json["server"]["source"], "metrics");
    // (process_cpu_seconds_total counts whole seconds: a short run may read 0.)
    assert!(json["server"]["cpu_secs"].as_f64().unwrap() >= 0.0);
    assert!(json["server"]["rss_peak_mib"].as_f64().unwrap() > 1.0);
    assert_eq!(json["counts"]["joined"], 120);
    assert_eq!(json["counts"]["chat_sent"], 20);
    assert_eq!(json["counts"]["gaps"], 0);
    assert!(json["counts"]["events"].as_u64().unwrap() >= 120 * 20);
}

#[test]
fn bad_scenario_files_are_refused_with_the_reason_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("name = \"x\"\n[viewers]\ncount = -4\n", "line 3"),
        (
            "name = \"x\"\n[viewers]\ncount = 10\n[[phase]]\ntype = \"join\"\nat = 0\nviewers = 10\nover = 1\n[[phase]]\ntype = \"flash_sale\"\nat = 2\nstock = 1\nbuyers = 10\nwithin = 1\n",
            "guests cannot buy",
        ),
        ("this is not toml", "bad.toml"),
    ];
    for (text, want) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        for cmd in ["run", "check"] {
            let out = Command::new(BIN).arg(cmd).arg(&file).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
            assert!(err.contains(want), "{cmd}: {err}");
        }
    }
    let out = Command::new(BIN)
        .args(["check", "/nonexistent/scenario.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // The examples check out and print their timeline.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/full-show.toml");
    let out = Command::new(BIN).args(["check", example]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("flash_sale") && stdout.contains("reconnect"),
        "{stdout}"
    );
    // Scaled down, printed as the file says it.
    let chat = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/chat-10k.toml");
    let out = Command::new(BIN)
        .args(["check", chat, "--scale", "0.01"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(": 100 viewers (auth = \"guest\")"),
        "{stdout}"
    );
    // A replay whose recording is missing: the scenario and the resolved path.
    let file = dir.path().join("replay.toml");
    std::fs::write(
        &file,
        "name = \"lost\"\n[viewers]\ncount = 1\n[[phase]]\ntype = \"join\"\nat = 0\nviewers = 1\nover = 0\n[[phase]]\ntype = \"replay\"\nat = 1\nfile = \"rec/none.jsonl\"\n",
    )
    .unwrap();
    for cmd in ["run", "check"] {
        let out = Command::new(BIN).arg(cmd).arg(&file).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        let path = dir.path().join("rec/none.jsonl");
        assert!(
            err.contains("scenario \"lost\", phase 2 (replay)")
                && err.contains(&path.display().to_string()),
            "{cmd}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recorded_show_replays_faster_and_scaled_and_the_tool_records_its_own() {
    use flashcast_wire::recording::{read_trace, TraceAction};
    let srv = start_server().await;
    let url = format!("http://{}", srv.server.addr);
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/recordings/sample-show.jsonl"
    );
    let (_, recorded) = read_trace(
        std::io::BufReader::new(std::fs::File::open(sample).unwrap()),
        100_000,
    )
    .unwrap();
    let count =
        |f: fn(&TraceAction) -> bool| recorded.iter().filter(|l| f(&l.action)).count() as u64;
    let (joins, chats, reactions) = (
        count(|a| matches!(a, TraceAction::Join { .. })),
        count(|a| matches!(a, TraceAction::Chat(_))),
        count(|a| matches!(a, TraceAction::React(_))),
    );
    assert!(joins > 0 && chats > 0 && reactions > 0);
    let text = format!(
        r#"
name = "replay-test"
[target]
url = "{url}"
[viewers]
count = 10
[load]
drain = 1
[[phase]]
type = "join"
at = 0
viewers = 10
over = 0.5
[[phase]]
type = "replay"
at = 1
file = "{sample}"
speed = 2
scale = 3
"#
    );
    let s = Scenario::parse(&text, "replay.toml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("tool.jsonl");
    let o = RunOptions {
        record: Some(trace.clone()),
        ..opts()
    };
    let v = run(&s, &o).await.expect("the run is carried out");
    let table = v.table();
    srv.server.shutdown().await;

    assert!(v.passed, "{table}");
    assert_eq!(v.viewers_target, 10 + joins * 3, "{table}");
    assert_eq!(v.counts.joined, 10 + joins * 3, "{table}");
    assert_eq!(v.counts.chat_sent, chats * 3, "{table}");
    assert_eq!(v.counts.reactions_sent, reactions * 3, "{table}");
    assert_eq!(v.counts.gaps, 0, "{table}");

    // The tool's own recording: one join per viewer, every chat and
    // reaction it sent, in time order, readable by the same reader.
    let (header, lines) = read_trace(
        std::io::BufReader::new(std::fs::File::open(&trace).unwrap()),
        1_000_000,
    )
    .unwrap();
    assert_eq!(header.room, "demo");
    let ours = |f: fn(&TraceAction) -> bool| lines.iter().filter(|l| f(&l.action)).count() as u64;
    assert_eq!(
        ours(|a| matches!(a, TraceAction::Join { .. })),
        10 + joins * 3
    );
    assert_eq!(ours(|a| matches!(a, TraceAction::Chat(_))), chats * 3);
    assert_eq!(ours(|a| matches!(a, TraceAction::React(_))), reactions * 3);
    assert!(lines.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
}

#[test]
fn an_unreachable_server_or_zero_workers_cannot_be_run_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nobody.toml");
    // Port 9 (discard) on loopback: nothing listens there.
    std::fs::write(
        &file,
        r#"
name = "nobody home"
[target]
url = "http://127.0.0.1:9"
[viewers]
count = 20
[load]
join_retries = 0
join_timeout = 2
drain = 0
[[phase]]
type = "join"
at = 0
viewers = 20
over = 0.2
"#,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(BIN)
        .arg("run")
        .arg(&file)
        .arg("--quiet")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A guest scenario (no admin API call before the joins) too: exit 2.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("http://127.0.0.1:9 is unreachable") && stderr.contains("refused"),
        "{stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // `--workers 0` is refused, not taken as 1.
    let out = Command::new(BIN)
        .arg("run")
        .arg(&file)
        .args(["--workers", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("load.workers must be 1-64"), "{stderr}");
}

/// A recording with a host and a signed-in buyer, replayed over a sale:
/// the host is not replayed (its action counts as skipped), and the
/// replayed buys count in the sale's demand, so a healthy run passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_with_buys_and_a_host_passes_the_exact_sale_check() {
    let srv = start_server().await;
    let url = format!("http://{}", srv.server.addr);
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("buys.jsonl");
    std::fs::write(
        &rec,
        r#"{"flashcast_recording":1,"room":"demo","started_unix_ms":1795431166967}
{"t_ms":0,"conn":1,"action":"join","role":"viewer"}
{"t_ms":50,"conn":2,"action":"join","role":"host"}
{"t_ms":300,"conn":2,"action":"host","kind":"open_poll"}
{"t_ms":600,"conn":1,"action":"buy","sku":"MUG-1","qty":1}
{"t_ms":900,"conn":1,"action":"leave"}
{"t_ms":950,"conn":2,"action":"leave"}
"#,
    )
    .unwrap();
    let text = format!(
        r#"
name = "replay-buys"
[target]
url = "{url}"
room = "rbuys"
create_room = true
[viewers]
count = 4
auth = "token"
[load]
drain = 1
[[phase]]
type = "join"
at = 0
viewers = 4
over = 0.2
[[phase]]
type = "flash_sale"
at = 1
stock = 100
buyers = 2
within = 0.3
[[phase]]
type = "replay"
at = 1
file = "{}"
scale = 5
"#,
        rec.display()
    );
    let s = Scenario::parse(&text, "replay-buys.toml").unwrap();
    let v = run(&s, &opts()).await.expect("the run is carried out");
    let table = v.table();
    srv.server.shutdown().await;

    assert!(v.passed, "{:?}\n{table}", v.failures);
    assert_eq!(v.viewers_target, 4 + 5, "the host is not replayed\n{table}");
    assert_eq!(v.counts.replay_skipped, 5, "{table}");
    assert_eq!(v.sales[0].demand, 2 + 5, "{table}");
    assert_eq!(v.counts.units_accepted, 7, "{table}");
}

/// `--abort-on-fail`: a run of 30 s whose p99 bound no run meets ends
/// within seconds, its report saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_on_fail_ends_the_run_at_the_first_failure() {
    let srv = start_server().await;
    let url = format!("http://{}", srv.server.addr);
    let text = format!(
        r#"
name = "abort"
[target]
url = "{url}"
[viewers]
count = 100
[load]
drain = 1
[[phase]]
type = "join"
at = 0
viewers = 100
over = 0.5
[[phase]]
type = "chat"
at = 0.5
duration = 30
rate = 40
senders = 40
[pass]
max_p99_ms = 0
"#
    );
    let s = Scenario::parse(&text, "abort.toml").unwrap();
    let o = RunOptions {
        abort_on_fail: true,
        ..opts()
    };
    let started = std::time::Instant::now();
    let v = run(&s, &o).await.expect("the run is carried out");
    let took = started.elapsed();
    srv.server.shutdown().await;

    assert!(!v.passed);
    assert!(
        v.failures[0].starts_with("ABORTED: at ") && v.failures[0].contains("p99 delivery"),
        "{:?}",
        v.failures
    );
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
    // What was measured before the stop is in the report.
    assert!(v.counts.chat_sent > 0 && v.counts.chat_sent < 40 * 30);
}
