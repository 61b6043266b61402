//! Durability of acknowledged orders: the real server binary is killed with
//! SIGKILL in the middle of a buy storm, restarted on the same data
//! directory, and must still hold every order it acknowledged, with
//! available stock = initial stock - live orders.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Client, Incoming};
use flashcast::auth::TokenKeys;
use flashcast_wire::ids::{RoomId, UserId};
use flashcast_wire::{Encoding, ErrorCode, Role, ServerMsg};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_flashcast");
const ADMIN: &str = "crash-admin";
const SECRET: &str = "crash-token-secret";
const STOCK: u32 = 5_000;
const BUYERS: usize = 100;

/// Acknowledged orders: id -> (user, key, qty).
type Acked = HashMap<u64, (String, String, u64)>;

/// Starts the binary on `dir`; returns it and its base URL.
async fn spawn(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-key",
            ADMIN,
            "--token-secret",
            SECRET,
        ])
        .args([
            "--joins-per-ip-burst",
            "10000",
            "--buys-per-sec",
            "10000",
            "--buys-burst",
            "10000",
        ])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let base = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines.next().expect("banner").unwrap();
            if line.contains("is running at") {
                break line.split_whitespace().last().unwrap().to_string();
            }
        };
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        base
    });
    let base = tokio::time::timeout(Duration::from_secs(30), base)
        .await
        .unwrap()
        .unwrap();
    (child, base)
}

fn admin(method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(method, url)
        .bearer_auth(ADMIN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_order_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = spawn(dir.path()).await;

    let r = admin(
        reqwest::Method::POST,
        format!("{base}/api/v1/rooms/demo/products"),
    )
    .json(&json!({"title": "Crash tee", "currency": "EUR",
            "variants": [{"sku": "TEE", "price_minor": 2500}]}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let r = admin(
        reqwest::Method::POST,
        format!("{base}/api/v1/rooms/demo/sales"),
    )
    .json(
        &json!({"sku": "TEE", "sale_price_minor": 1000, "stock": STOCK,
            "per_user_limit": 100, "duration_secs": 3600, "payment_window_secs": 3600}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let sale: Value = r.json().await.unwrap();
    let sale_id = sale["id"].as_u64().unwrap();

    // Buyers buy 1 or 2 units at a time with fresh keys, as fast as they
    // are answered, recording every order the server acknowledged.
    let keys = TokenKeys::new(SECRET.as_bytes());
    let room = RoomId::new("demo").unwrap();
    let ws = format!("{}/ws", base.replace("http://", "ws://"));
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut buyers = Vec::new();
    for i in 0..BUYERS {
        let user = format!("buyer{i}");
        let (token, _) = keys.mint(
            &UserId::new(&user).unwrap(),
            &user,
            Role::Viewer,
            &room,
            3600,
        );
        let mut c = Client::connect(&ws, Encoding::MsgPack).await;
        c.join("demo", Some(&token), None).await;
        let (acked, answered) = (acked.clone(), answered.clone());
        buyers.push(tokio::spawn(async move {
            for n in 0.. {
                let key = format!("{user}-{n}");
                let qty = 1 + (n % 2) as u64;
                c.send(json!({"type": "buy", "sku": "TEE", "qty": qty, "key": key}))
                    .await;
                loop {
                    match c.recv().await {
                        Incoming::Msg(ServerMsg::Order { order, .. }) => {
                            acked
                                .lock()
                                .unwrap()
                                .insert(order.id.0, (user.clone(), key.clone(), qty));
                            answered.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Incoming::Msg(ServerMsg::Error { code, .. }) => {
                            assert!(
                                matches!(code, ErrorCode::PerUserLimit | ErrorCode::SoldOut),
                                "unexpected {code:?}"
                            );
                            return;
                        }
                        Incoming::Msg(_) => {}
                        // The server died under us.
                        Incoming::Close(..) | Incoming::Gone => return,
                    }
                }
            }
        }));
    }

    // Mid-storm: at least a few hundred acknowledged, then SIGKILL.
    tokio::time::timeout(Duration::from_secs(60), async {
        while answered.load(Ordering::Relaxed) < 500 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the storm gets going");
    child.kill().unwrap(); // SIGKILL: no shutdown code runs
    child.wait().unwrap();
    for b in buyers {
        tokio::time::timeout(Duration::from_secs(30), b)
            .await
            .unwrap()
            .unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 500);

    // Restart on the same directory.
    let (mut child, base) = spawn(dir.path()).await;
    let orders: Vec<Value> = admin(
        reqwest::Method::GET,
        format!("{base}/api/v1/orders?sale_id={sale_id}"),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let stored: HashMap<u64, &Value> = orders
        .iter()
        .map(|o| (o["id"].as_u64().unwrap(), o))
        .collect();
    for (id, (user, key, qty)) in &acked {
        let o = stored
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged order {id} lost in the crash"));
        assert_eq!(o["user_id"], *user);
        assert_eq!(o["key"], *key);
        assert_eq!(o["qty"], *qty);
        assert_eq!(o["status"], "reserved");
    }
    // Orders committed but not yet answered when the process died may exist
    // too; either way stock = initial - live orders, in the API...
    let live: u64 = orders
        .iter()
        .filter(|o| o["status"] == "reserved" || o["status"] == "paid")
        .map(|o| o["qty"].as_u64().unwrap())
        .sum();
    let sale: Value = admin(
        reqwest::Method::GET,
        format!("{base}/api/v1/rooms/demo/sales/{sale_id}"),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(sale["available"].as_u64().unwrap(), STOCK as u64 - live);
    // ...and in what a viewer joining now sees.
    let mut viewer = Client::connect(
        &format!("{}/ws", base.replace("http://", "ws://")),
        Encoding::Json,
    )
    .await;
    let ServerMsg::Joined { state, .. } = viewer.join("demo", None, None).await else {
        unreachable!()
    };
    assert_eq!(state.sales[0].available as u64, STOCK as u64 - live);

    // A retried key after the crash returns its order, not a new one.
    let (id, (user, key, qty)) = acked.iter().next().unwrap();
    let (token, _) = keys.mint(&UserId::new(user).unwrap(), user, Role::Viewer, &room, 3600);
    let mut again = Client::connect(
        &format!("{}/ws", base.replace("http://", "ws://")),
        Encoding::Json,
    )
    .await;
    again.join("demo", Some(&token), None).await;
    let order = again.buy("TEE", *qty as u32, key, None).await.unwrap();
    assert_eq!(order["id"].as_u64(), Some(*id));

    child.kill().unwrap();
    child.wait().unwrap();
}
