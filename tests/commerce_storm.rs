//! 2,000 buyers over real WebSockets hit one sale of 100 units in the same
//! instant: exactly 100 are accepted, 1,900 are sold out, nobody holds more
//! than the per-user limit, and duplicate keys return the same order; every
//! buy's answer time is measured once.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::{create_product, create_sale, TestServer};
use flashcast_wire::{Encoding, ErrorCode, Role, ServerMsg};
use serde_json::{json, Value};
use tokio::sync::Barrier;

const BUYERS: usize = 2_000;
const UNITS: u32 = 100;

#[derive(Debug)]
struct Outcome {
    /// Order id of the first buy, if accepted.
    order: Option<u64>,
    first: Option<ErrorCode>,
    /// Order ids (or errors) of the duplicate sent right behind the first.
    duplicate: Result<u64, Option<ErrorCode>>,
    /// The same key again once all settled.
    retry: Result<u64, Option<ErrorCode>>,
    /// A second unit with a new key.
    second: Result<u64, Option<ErrorCode>>,
}

fn reply(msg: &ServerMsg) -> Option<Result<u64, Option<ErrorCode>>> {
    match msg {
        ServerMsg::Order { order, .. } => Some(Ok(order.id.0)),
        ServerMsg::Error { code, .. } => Some(Err(Some(*code))),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_buyers_on_a_hundred_units() {
    let s = TestServer::start(&["--max-connections", "5000"]).await;
    create_product(&s, "demo", &["DROP-1"]).await;
    let sale = create_sale(&s, "demo", "DROP-1", UNITS, json!({"per_user_limit": 1})).await;

    let start = Arc::new(Barrier::new(BUYERS));
    let settled = Arc::new(Barrier::new(BUYERS));
    let mut tasks = Vec::with_capacity(BUYERS);
    for i in 0..BUYERS {
        let enc = if i % 2 == 0 {
            Encoding::MsgPack
        } else {
            Encoding::Json
        };
        let token = s.token("demo", &format!("buyer{i}"), Role::Viewer);
        let url = s.ws_url();
        let (start, settled) = (start.clone(), settled.clone());
        tasks.push(tokio::spawn(async move {
            // Everyone connects and joins concurrently, then buys at once.
            let mut c = common::Client::connect(&url, enc).await;
            c.join("demo", Some(&token), None).await;
            start.wait().await;
            // The buy and an immediate duplicate (same key), pipelined.
            c.send(json!({"type": "buy", "sku": "DROP-1", "qty": 1, "key": "k1", "ref": 1}))
                .await;
            c.send(json!({"type": "buy", "sku": "DROP-1", "qty": 1, "key": "k1", "ref": 2}))
                .await;
            let mut got = Vec::new();
            while got.len() < 2 {
                let m = c.next_other().await;
                if let Some(r) = reply(&m) {
                    got.push(r);
                }
            }
            let mut out = Outcome {
                order: None,
                first: None,
                duplicate: got[1],
                retry: Err(None),
                second: Err(None),
            };
            match got[0] {
                Ok(id) => out.order = Some(id),
                Err(code) => out.first = code,
            }
            settled.wait().await;
            out.retry = match c.buy("DROP-1", 1, "k1", None).await {
                Ok(o) => Ok(o["id"].as_u64().unwrap()),
                Err(e) => Err(Some(e)),
            };
            out.second = match c.buy("DROP-1", 1, "k2", None).await {
                Ok(o) => Ok(o["id"].as_u64().unwrap()),
                Err(e) => Err(Some(e)),
            };
            out
        }));
    }
    let mut outcomes = Vec::with_capacity(BUYERS);
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }

    let accepted: Vec<u64> = outcomes.iter().filter_map(|o| o.order).collect();
    let sold_out = outcomes
        .iter()
        .filter(|o| o.first == Some(ErrorCode::SoldOut))
        .count();
    assert_eq!(accepted.len(), UNITS as usize, "exactly the stock is sold");
    assert_eq!(
        sold_out,
        BUYERS - UNITS as usize,
        "everyone else hears sold out"
    );
    assert_eq!(
        accepted.iter().collect::<HashSet<_>>().len(),
        accepted.len()
    );
    for o in &outcomes {
        match o.order {
            Some(id) => {
                // The duplicate was the same order (or told to retry), the
                // retry is the same order, a second unit is over the limit.
                assert!(
                    o.duplicate == Ok(id) || o.duplicate == Err(Some(ErrorCode::BuyInProgress)),
                    "{o:?}"
                );
                assert_eq!(o.retry, Ok(id), "{o:?}");
                assert_eq!(o.second, Err(Some(ErrorCode::PerUserLimit)), "{o:?}");
            }
            None => {
                assert!(
                    matches!(
                        o.duplicate,
                        Err(Some(ErrorCode::SoldOut | ErrorCode::BuyInProgress))
                    ),
                    "{o:?}"
                );
                assert_eq!(o.retry, Err(Some(ErrorCode::SoldOut)), "{o:?}");
                assert_eq!(o.second, Err(Some(ErrorCode::SoldOut)), "{o:?}");
            }
        }
    }

    // The store agrees: 100 orders, 100 distinct buyers, none left.
    let orders: Vec<Value> = s
        .admin_get(&format!("/api/v1/orders?sale_id={}", sale["id"]))
        .await;
    assert_eq!(orders.len(), UNITS as usize);
    let mut per_user: HashMap<String, u64> = HashMap::new();
    for o in &orders {
        *per_user
            .entry(o["user_id"].as_str().unwrap().into())
            .or_default() += o["qty"].as_u64().unwrap();
    }
    assert!(per_user.values().all(|q| *q == 1));
    let stored: HashSet<u64> = orders.iter().map(|o| o["id"].as_u64().unwrap()).collect();
    assert_eq!(stored, accepted.iter().copied().collect::<HashSet<u64>>());
    let sale: Value = s
        .admin_get(&format!("/api/v1/rooms/demo/sales/{}", sale["id"]))
        .await;
    assert_eq!(sale["available"], 0);
    // Every buy was answered and timed once: accepted ones when their
    // answer left after the commit, the others when refused.
    let buys = 4 * BUYERS as u64;
    assert_eq!(s.metric("flashcast_buy_seconds_count").await, buys);
    s.stop().await;
}
