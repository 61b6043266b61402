//! Flash sales end to end over real WebSockets and the REST API, with a real
//! SQLite file: buying, idempotency, per-user limits, sold out, expiry back
//! to stock (seen by viewers), coupons, the payment webhook, cancellation,
//! order queries and the admin API's refusals.

mod common;

use std::time::Duration;

use common::{create_product, create_sale, TestServer};
use flashcast::commerce::payment::sign;
use flashcast_wire::{Encoding, ErrorCode, EventBody, Role, ServerMsg};
use reqwest::Method;
use serde_json::{json, Value};

const SECRET: &str = "whsec-test";

async fn server() -> TestServer {
    TestServer::start(&["--webhook-secret", SECRET, "--expiry-sweep-ms", "50"]).await
}

fn stock_is(available: u32) -> impl Fn(&flashcast_wire::Event) -> bool {
    move |e| matches!(e.body, EventBody::Stock { available: a, .. } if a == available)
}

#[tokio::test]
async fn buying_reserves_once_per_key_and_viewers_see_the_stock() {
    let s = server().await;
    create_product(&s, "demo", &["SHIRT-M"]).await;
    let sale = create_sale(&s, "demo", "SHIRT-M", 3, json!({"per_user_limit": 1})).await;
    assert_eq!(sale["status"], "live");
    assert_eq!(sale["available"], 3);

    let mut watcher = s.guest(Encoding::MsgPack).await;
    let mut ann = s.joined(Encoding::Json, "demo", "ann", Role::Viewer).await;

    let order = ann.buy("SHIRT-M", 1, "k1", None).await.unwrap();
    assert_eq!(order["status"], "reserved");
    assert_eq!(order["qty"], 1);
    assert_eq!(
        order["unit_price"],
        json!({"minor": 1900, "currency": "USD"})
    );
    assert_eq!(order["total"], json!({"minor": 1900, "currency": "USD"}));
    assert_eq!(order["user_id"], "ann");
    assert!(order["deadline"].as_u64().unwrap() > order["created_at"].as_u64().unwrap());
    watcher.wait_event(stock_is(2)).await;

    // A retry with the same key is the same order, not a second one.
    let again = ann.buy("SHIRT-M", 1, "k1", None).await.unwrap();
    assert_eq!(again["id"], order["id"]);
    // The same key for another request is a conflict.
    assert_eq!(
        ann.buy("SHIRT-M", 2, "k1", None).await,
        Err(ErrorCode::IdempotencyConflict)
    );
    // A new key would take ann over the per-user limit.
    assert_eq!(
        ann.buy("SHIRT-M", 1, "k2", None).await,
        Err(ErrorCode::PerUserLimit)
    );
    assert_eq!(
        ann.buy("SHIRT-M", 0, "k3", None).await,
        Err(ErrorCode::BadQuantity)
    );
    assert_eq!(
        ann.buy("SHIRT-M", 101, "k3", None).await,
        Err(ErrorCode::BadQuantity)
    );
    assert_eq!(
        ann.buy("NOPE", 1, "k3", None).await,
        Err(ErrorCode::UnknownSku)
    );

    // Guests cannot buy (they could dodge the per-user limit by reconnecting).
    let mut guest = s.guest(Encoding::Json).await;
    assert_eq!(
        guest.buy("SHIRT-M", 1, "g1", None).await,
        Err(ErrorCode::Forbidden)
    );

    // Exactly one order was stored, and the sale shows 2 left.
    let orders: Vec<Value> = s.admin_get("/api/v1/orders?room=demo").await;
    assert_eq!(orders.len(), 1);
    let sale: Value = s
        .admin_get(&format!("/api/v1/rooms/demo/sales/{}", sale["id"]))
        .await;
    assert_eq!(sale["available"], 2);
    s.stop().await;
}

#[tokio::test]
async fn a_sale_is_scheduled_starts_and_ends_as_room_events() {
    let s = server().await;
    create_product(&s, "demo", &["TEE-S", "TEE-L"]).await;
    let mut host = s.joined(Encoding::Json, "demo", "host", Role::Host).await;
    let mut bob = s
        .joined(Encoding::MsgPack, "demo", "bob", Role::Viewer)
        .await;

    assert_eq!(
        bob.buy("TEE-S", 1, "b0", None).await,
        Err(ErrorCode::NoSale)
    );
    let starts_at = s.clock.now_ms() + 60_000;
    host.act(
        json!({"type": "start_sale", "sku": "TEE-S", "sale_price_minor": 990,
        "stock": 5, "per_user_limit": 2, "starts_at": starts_at, "duration_secs": 60}),
    )
    .await
    .unwrap();
    let scheduled = bob
        .wait_event(|e| matches!(e.body, EventBody::SaleScheduled { .. }))
        .await;
    let EventBody::SaleScheduled { sale } = scheduled.body else {
        unreachable!()
    };
    assert_eq!(sale.starts_at, starts_at);
    assert_eq!(sale.sale_price.minor, 990);
    assert_eq!(
        bob.buy("TEE-S", 1, "b1", None).await,
        Err(ErrorCode::SaleNotStarted)
    );
    // One sale per SKU at a time.
    let dup = host
        .act(
            json!({"type": "start_sale", "sku": "TEE-S", "sale_price_minor": 1,
            "stock": 1, "per_user_limit": 1, "duration_secs": 60}),
        )
        .await;
    assert_eq!(dup, Err(ErrorCode::Conflict));
    // Viewers cannot run sales.
    assert_eq!(
        bob.act(json!({"type": "end_sale", "sale_id": sale.id}))
            .await,
        Err(ErrorCode::Forbidden)
    );

    // A minute passes on the server's clock, not the test's.
    s.clock.advance(Duration::from_secs(60));
    bob.wait_event(|e| matches!(e.body, EventBody::SaleStarted { .. }))
        .await;
    let order = bob.buy("TEE-S", 2, "b2", None).await.unwrap();
    assert_eq!(order["total"]["minor"], 1980);
    bob.wait_event(stock_is(3)).await;

    host.act(json!({"type": "end_sale", "sale_id": sale.id}))
        .await
        .unwrap();
    let ended = bob
        .wait_event(|e| matches!(e.body, EventBody::SaleEnded { .. }))
        .await;
    let EventBody::SaleEnded { sold, reason, .. } = ended.body else {
        unreachable!()
    };
    assert_eq!(sold, 2);
    assert_eq!(reason, flashcast_wire::SaleEndReason::Host);
    assert_eq!(
        bob.buy("TEE-S", 1, "b3", None).await,
        Err(ErrorCode::SaleEnded)
    );
    // The retry of the earlier buy still gets its order after the end.
    assert_eq!(
        bob.buy("TEE-S", 2, "b2", None).await.unwrap()["id"],
        order["id"]
    );

    // A late joiner's snapshot has no open sale any more.
    let mut late = s.guest(Encoding::Json).await;
    let _ = &mut late;
    s.stop().await;
}

#[tokio::test]
async fn unpaid_reservations_expire_back_to_stock_and_viewers_see_it() {
    let s = server().await;
    create_product(&s, "demo", &["CAP"]).await;
    create_sale(&s, "demo", "CAP", 1, json!({"payment_window_secs": 60})).await;
    let mut watcher = s.guest(Encoding::Json).await;
    let mut ann = s.joined(Encoding::Json, "demo", "ann", Role::Viewer).await;
    let mut bob = s
        .joined(Encoding::MsgPack, "demo", "bob", Role::Viewer)
        .await;

    let order = ann.buy("CAP", 1, "a", None).await.unwrap();
    watcher.wait_event(stock_is(0)).await;
    assert_eq!(bob.buy("CAP", 1, "b", None).await, Err(ErrorCode::SoldOut));

    // No payment: after the deadline the unit comes back, and everyone sees it.
    s.clock.advance(Duration::from_secs(61));
    let back = watcher.wait_event(stock_is(1)).await;
    assert!(back.ts >= order["deadline"].as_u64().unwrap());
    let expired: Value = s
        .admin_get(&format!("/api/v1/orders/{}", order["id"]))
        .await;
    assert_eq!(expired["status"], "expired");
    assert!(expired["closed_at"].is_u64());
    // Ann's allowance came back too; Bob gets the unit.
    bob.buy("CAP", 1, "b2", None).await.unwrap();
    watcher.wait_event(stock_is(0)).await;
    s.stop().await;
}

#[tokio::test]
async fn coupons_are_first_come_one_each_and_take_money_off() {
    let s = server().await;
    create_product(&s, "demo", &["MUG", "BOWL"]).await;
    let sale = create_sale(&s, "demo", "MUG", 10, json!({"per_user_limit": 3})).await;
    let mut host = s.joined(Encoding::Json, "demo", "host", Role::Host).await;
    let mut ann = s.joined(Encoding::Json, "demo", "ann", Role::Viewer).await;
    let mut bob = s
        .joined(Encoding::MsgPack, "demo", "bob", Role::Viewer)
        .await;

    host.act(json!({"type": "drop_coupon", "count": 1,
        "discount": {"kind": "percent", "percent": 10}, "expires_in_secs": 60}))
        .await
        .unwrap();
    let dropped = ann
        .wait_event(|e| matches!(e.body, EventBody::CouponDropped { .. }))
        .await;
    let EventBody::CouponDropped { coupon } = dropped.body else {
        unreachable!()
    };
    assert_eq!(coupon.left, 1);
    let id = coupon.id.0;

    ann.send(json!({"type": "claim_coupon", "coupon_id": id, "ref": 7}))
        .await;
    match ann.next_other().await {
        ServerMsg::CouponClaimed { reference, coupon } => {
            assert_eq!(reference, Some(7));
            assert_eq!(coupon.left, 0);
        }
        other => panic!("expected coupon_claimed, got {other:?}"),
    }
    ann.send(json!({"type": "claim_coupon", "coupon_id": id}))
        .await;
    ann.expect_error(ErrorCode::CouponAlreadyClaimed).await;
    bob.send(json!({"type": "claim_coupon", "coupon_id": id}))
        .await;
    bob.expect_error(ErrorCode::CouponsGone).await;
    bob.wait_event(|e| matches!(e.body, EventBody::CouponsLeft { left: 0, .. }))
        .await;
    bob.send(json!({"type": "claim_coupon", "coupon_id": 999_999}))
        .await;
    bob.expect_error(ErrorCode::CouponUnknown).await;

    // 10% off 2 x 1,900.
    let order = ann.buy("MUG", 2, "a1", Some(id)).await.unwrap();
    assert_eq!(order["discount_minor"], 380);
    assert_eq!(order["total"]["minor"], 3420);
    assert_eq!(order["coupon_id"], id);
    assert_eq!(
        ann.buy("MUG", 1, "a2", Some(id)).await,
        Err(ErrorCode::CouponUsed)
    );
    assert_eq!(
        bob.buy("MUG", 1, "b1", Some(id)).await,
        Err(ErrorCode::CouponNotClaimed)
    );

    // Scope: a SKU coupon for BOWL does not apply to the MUG sale; a fixed
    // amount never takes the total below zero.
    let r = s
        .admin(Method::POST, "/api/v1/rooms/demo/coupons")
        .json(&json!({"count": 5, "discount": {"kind": "fixed",
            "amount": {"minor": 100000, "currency": "USD"}},
            "scope": {"kind": "sku", "sku": "BOWL"}, "expires_in_secs": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let bowl: Value = r.json().await.unwrap();
    let bowl_id = bowl["id"].as_u64().unwrap();
    bob.send(json!({"type": "claim_coupon", "coupon_id": bowl_id}))
        .await;
    assert!(matches!(
        bob.next_other().await,
        ServerMsg::CouponClaimed { .. }
    ));
    assert_eq!(
        bob.buy("MUG", 1, "b2", Some(bowl_id)).await,
        Err(ErrorCode::CouponOutOfScope)
    );
    let r = s
        .admin(Method::POST, "/api/v1/rooms/demo/coupons")
        .json(&json!({"count": 5, "discount": {"kind": "fixed",
            "amount": {"minor": 100000, "currency": "USD"}},
            "scope": {"kind": "sale", "sale_id": sale["id"]}, "expires_in_secs": 60}))
        .send()
        .await
        .unwrap();
    let big: Value = r.json().await.unwrap();
    let big_id = big["id"].as_u64().unwrap();
    bob.send(json!({"type": "claim_coupon", "coupon_id": big_id}))
        .await;
    assert!(matches!(
        bob.next_other().await,
        ServerMsg::CouponClaimed { .. }
    ));
    let free = bob.buy("MUG", 1, "b3", Some(big_id)).await.unwrap();
    assert_eq!(free["total"]["minor"], 0);
    s.clock.advance(Duration::from_secs(61));
    ann.send(json!({"type": "claim_coupon", "coupon_id": big_id}))
        .await;
    ann.expect_error(ErrorCode::CouponExpired).await;
    s.stop().await;
}

fn webhook(s: &TestServer, body: &Value, secret: &str, t: u64) -> reqwest::RequestBuilder {
    let raw = serde_json::to_vec(body).unwrap();
    reqwest::Client::new()
        .post(s.http("/api/v1/payments/webhook"))
        .header("content-type", "application/json")
        .header("Flashcast-Signature", sign(secret.as_bytes(), t, &raw))
        .body(raw)
}

/// The server's time, for webhook signatures.
fn now_secs(s: &TestServer) -> u64 {
    s.clock.now_secs()
}

async fn error_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (status, v["error"]["code"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn the_payment_webhook_is_signed_single_use_and_exact() {
    let s = server().await;
    create_product(&s, "demo", &["LAMP"]).await;
    create_sale(
        &s,
        "demo",
        "LAMP",
        5,
        json!({"per_user_limit": 5, "payment_window_secs": 60}),
    )
    .await;
    let mut ann = s.joined(Encoding::Json, "demo", "ann", Role::Viewer).await;
    let mut watcher = s.guest(Encoding::Json).await;
    let order = ann.buy("LAMP", 2, "a1", None).await.unwrap();
    let id = order["id"].as_u64().unwrap();
    let paid_body = json!({"event_id": "evt_1", "order_id": id,
        "amount": {"minor": 3800, "currency": "USD"}});

    // Wrong secret, stale and future timestamps, missing header: 401.
    let r = webhook(&s, &paid_body, "not-the-secret", now_secs(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (401, "bad_signature".into()));
    let r = webhook(&s, &paid_body, SECRET, now_secs(&s) - 3_600)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (401, "bad_signature".into()));
    let r = webhook(&s, &paid_body, SECRET, now_secs(&s) + 3_600)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (401, "bad_signature".into()));
    let r = reqwest::Client::new()
        .post(s.http("/api/v1/payments/webhook"))
        .json(&paid_body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (401, "bad_signature".into()));
    // A body changed after signing fails too.
    let raw = serde_json::to_vec(&paid_body).unwrap();
    let header = sign(SECRET.as_bytes(), now_secs(&s), &raw);
    let mut tampered = raw.clone();
    let pos = tampered.iter().position(|b| *b == b'3').unwrap();
    tampered[pos] = b'1';
    let r = reqwest::Client::new()
        .post(s.http("/api/v1/payments/webhook"))
        .header("Flashcast-Signature", header)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (401, "bad_signature".into()));

    // Signed but wrong: unknown order, wrong amount, malformed body.
    let unknown = json!({"event_id": "evt_x", "order_id": 987_654,
        "amount": {"minor": 3800, "currency": "USD"}});
    let r = webhook(&s, &unknown, SECRET, now_secs(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (404, "order_not_found".into()));
    let short = json!({"event_id": "evt_y", "order_id": id,
        "amount": {"minor": 1, "currency": "USD"}});
    let r = webhook(&s, &short, SECRET, now_secs(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (422, "amount_mismatch".into()));
    let r = webhook(&s, &json!({"order_id": id}), SECRET, now_secs(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (400, "malformed".into()));

    // The real one marks it paid; a replay of it is refused.
    let r = webhook(&s, &paid_body, SECRET, now_secs(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let paid: Value = r.json().await.unwrap();
    assert_eq!(paid["status"], "paid");
    assert!(paid["paid_at"].is_u64());
    let r = webhook(&s, &paid_body, SECRET, now_secs(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (409, "webhook_replayed".into()));
    let other_event = json!({"event_id": "evt_2", "order_id": id,
        "amount": {"minor": 3800, "currency": "USD"}});
    let r = webhook(&s, &other_event, SECRET, now_secs(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (409, "order_final".into()));

    // A paid order does not expire; a reserved one past its deadline cannot be paid.
    let late = ann.buy("LAMP", 1, "a2", None).await.unwrap();
    s.clock.advance(Duration::from_secs(61));
    // The sweep expires it on its next pass; wait for that commit, so the
    // webhook meets an expired order rather than one being expired.
    let late_path = format!("/api/v1/orders/{}", late["id"]);
    tokio::time::timeout(common::WAIT, async {
        loop {
            let order: Value = s.admin_get(&late_path).await;
            if order["status"] == "expired" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the sweep expires the reservation");
    let late_body = json!({"event_id": "evt_3", "order_id": late["id"],
        "amount": {"minor": 1900, "currency": "USD"}});
    let r = webhook(&s, &late_body, SECRET, now_secs(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (409, "payment_deadline_passed".into()));
    // Viewers see its unit come back (counts are conflated per 250 ms, so
    // without this the room may never have shown a value other than 5).
    watcher.wait_event(stock_is(3)).await;
    let still: Value = s.admin_get(&format!("/api/v1/orders/{id}")).await;
    assert_eq!(still["status"], "paid");

    // Admin cancel of the paid order gives its 2 units back: 5 left again.
    let r = s
        .admin(Method::POST, &format!("/api/v1/orders/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cancelled: Value = r.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["paid_at"].is_u64(), "the payment stays on record");
    watcher.wait_event(stock_is(5)).await;
    let r = s
        .admin(Method::POST, &format!("/api/v1/orders/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (409, "order_final".into()));
    s.stop().await;
}

#[tokio::test]
async fn orders_are_queryable_by_room_user_sale_and_status_and_export_as_csv() {
    let s = server().await;
    s.create_room(json!({"id": "other", "title": "Other show"}))
        .await;
    create_product(&s, "demo", &["A"]).await;
    create_product(&s, "other", &["B"]).await;
    let sale_a = create_sale(&s, "demo", "A", 10, json!({"per_user_limit": 5})).await;
    create_sale(&s, "other", "B", 10, json!({"per_user_limit": 5})).await;
    let mut ann = s.joined(Encoding::Json, "demo", "ann", Role::Viewer).await;
    let mut bob = s.joined(Encoding::Json, "demo", "bob", Role::Viewer).await;
    let mut cy = s.joined(Encoding::Json, "other", "cy", Role::Viewer).await;
    ann.buy("A", 1, "1", None).await.unwrap();
    ann.buy("A", 2, "2", None).await.unwrap();
    let bob_order = bob.buy("A", 1, "1", None).await.unwrap();
    cy.buy("B", 1, "1", None).await.unwrap();
    s.admin(
        Method::POST,
        &format!("/api/v1/orders/{}/cancel", bob_order["id"]),
    )
    .send()
    .await
    .unwrap();

    let srv = &s;
    let count = |path: String| async move { srv.admin_get::<Vec<Value>>(&path).await.len() };
    assert_eq!(count("/api/v1/orders".into()).await, 4);
    assert_eq!(count("/api/v1/orders?room=demo".into()).await, 3);
    assert_eq!(count("/api/v1/orders?user_id=ann".into()).await, 2);
    assert_eq!(
        count(format!("/api/v1/orders?sale_id={}", sale_a["id"])).await,
        3
    );
    assert_eq!(
        count("/api/v1/orders?room=demo&status=cancelled".into()).await,
        1
    );
    assert_eq!(count("/api/v1/orders?limit=2".into()).await, 2);
    let first: Vec<Value> = s.admin_get("/api/v1/orders?limit=2").await;
    let after = first[1]["id"].as_u64().unwrap();
    assert_eq!(count(format!("/api/v1/orders?after={after}")).await, 2);

    let r = s
        .admin(Method::GET, "/api/v1/orders.csv?room=demo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "header + 3 orders:\n{csv}");
    assert!(lines[0].starts_with("id,room,sale_id,product_id,sku,label,user_id"));
    assert!(
        lines[1].contains(",ann,") && lines[1].contains("\"Linen shirt (M)\"")
            || lines[1].contains("Linen shirt (M)")
    );

    for bad in [
        "status=lost",
        "limit=0",
        "after=x",
        "colour=red",
        "room=has%20space",
    ] {
        let r = s
            .admin(Method::GET, &format!("/api/v1/orders?{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(r).await, (400, "invalid_argument".into()), "{bad}");
    }
    let r = reqwest::get(s.http("/api/v1/orders")).await.unwrap();
    assert_eq!(error_of(r).await, (401, "unauthorized".into()));
    s.stop().await;
}

#[tokio::test]
async fn pinned_products_sales_and_coupons_are_in_events_and_snapshots() {
    let s = server().await;
    let product = create_product(&s, "demo", &["HAT"]).await;
    let mut host = s.joined(Encoding::Json, "demo", "host", Role::Host).await;
    let mut ann = s
        .joined(Encoding::MsgPack, "demo", "ann", Role::Viewer)
        .await;

    host.act(json!({"type": "pin_product", "product_id": product["id"]}))
        .await
        .unwrap();
    let pinned = ann
        .wait_event(|e| matches!(e.body, EventBody::ProductPinned { .. }))
        .await;
    let EventBody::ProductPinned { product: p } = pinned.body else {
        unreachable!()
    };
    assert_eq!(p.title, "Linen shirt");
    assert_eq!(p.variants[0].price_minor, 3900);
    assert_eq!(
        host.act(json!({"type": "pin_product", "product_id": 424_242}))
            .await,
        Err(ErrorCode::NotFound)
    );
    create_sale(&s, "demo", "HAT", 4, json!({})).await;
    host.act(json!({"type": "drop_coupon", "count": 3,
        "discount": {"kind": "percent", "percent": 5}, "expires_in_secs": 60}))
        .await
        .unwrap();
    ann.wait_event(|e| matches!(e.body, EventBody::CouponDropped { .. }))
        .await;

    // A viewer joining now gets all of it in the snapshot.
    let mut late = s.client(Encoding::Json).await;
    let joined = late.join("demo", None, None).await;
    let ServerMsg::Joined { state, .. } = joined else {
        unreachable!()
    };
    assert_eq!(
        state.pinned_product.as_ref().map(|p| p.id.0),
        product["id"].as_u64()
    );
    assert_eq!(state.sales.len(), 1);
    assert_eq!(state.sales[0].available, 4);
    assert_eq!(state.coupons.len(), 1);
    assert_eq!(state.coupons[0].left, 3);

    // Unpin over REST.
    let r = s
        .admin(Method::PUT, "/api/v1/rooms/demo/pin")
        .json(&json!({"product_id": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    ann.wait_event(|e| matches!(e.body, EventBody::ProductUnpinned {}))
        .await;
    s.stop().await;
}

#[tokio::test]
async fn malformed_admin_requests_are_refused_with_documented_codes() {
    let s = server().await;
    create_product(&s, "demo", &["X1"]).await;
    let post = |path: &'static str, body: Value| s.admin(Method::POST, path).json(&body).send();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/api/v1/rooms/demo/products",
            json!({"title": "t"}),
            400,
            "malformed",
        ),
        (
            "/api/v1/rooms/demo/products",
            json!({"title": "t", "currency": "usd",
            "variants": [{"sku": "Y", "price_minor": 1}]}),
            400,
            "malformed",
        ),
        (
            "/api/v1/rooms/demo/products",
            json!({"title": "t", "currency": "USD",
            "variants": [{"sku": "Y", "price_minor": 1}], "price": 5}),
            400,
            "malformed",
        ),
        (
            "/api/v1/rooms/demo/products",
            json!({"title": "t", "currency": "USD",
            "variants": []}),
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/rooms/demo/products",
            json!({"title": "dup", "currency": "USD",
            "variants": [{"sku": "X1", "price_minor": 1}]}),
            409,
            "conflict",
        ),
        (
            "/api/v1/rooms/nope/products",
            json!({"title": "t", "currency": "USD",
            "variants": [{"sku": "Y", "price_minor": 1}]}),
            404,
            "room_not_found",
        ),
        (
            "/api/v1/rooms/demo/sales",
            json!({"sku": "ZZ", "sale_price_minor": 1, "stock": 1,
            "per_user_limit": 1, "duration_secs": 60}),
            404,
            "unknown_sku",
        ),
        (
            "/api/v1/rooms/demo/sales",
            json!({"sku": "X1", "sale_price_minor": 1, "stock": 0,
            "per_user_limit": 1, "duration_secs": 60}),
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/rooms/demo/sales",
            json!({"sku": "X1", "sale_price_minor": 1, "stock": 1,
            "per_user_limit": 1, "duration_secs": 0}),
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/rooms/demo/sales",
            json!({"sku": "X1", "sale_price_minor": -5, "stock": 1,
            "per_user_limit": 1, "duration_secs": 60}),
            400,
            "malformed",
        ),
        (
            "/api/v1/rooms/demo/coupons",
            json!({"count": 1, "discount": {"kind": "percent",
            "percent": 0}, "expires_in_secs": 60}),
            400,
            "invalid_argument",
        ),
        (
            "/api/v1/rooms/demo/coupons",
            json!({"count": 1, "discount": {"kind": "percent",
            "percent": 10}, "scope": {"kind": "sale", "sale_id": 999}, "expires_in_secs": 60}),
            404,
            "not_found",
        ),
        (
            "/api/v1/orders/12345/cancel",
            json!({}),
            404,
            "order_not_found",
        ),
    ];
    for (path, body, status, code) in cases {
        let r = post(path, body.clone()).await.unwrap();
        assert_eq!(
            error_of(r).await,
            (status, code.to_string()),
            "{path} {body}"
        );
    }
    let r = s
        .admin(Method::POST, "/api/v1/rooms/demo/products")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (400, "malformed".into()));
    let r = reqwest::Client::new()
        .post(s.http("/api/v1/rooms/demo/sales"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (401, "unauthorized".into()));
    // Nothing of it stuck: one product, no sale, no coupon.
    assert_eq!(
        s.admin_get::<Vec<Value>>("/api/v1/rooms/demo/products")
            .await
            .len(),
        1
    );
    assert!(s
        .admin_get::<Vec<Value>>("/api/v1/rooms/demo/sales")
        .await
        .is_empty());
    assert!(s
        .admin_get::<Vec<Value>>("/api/v1/rooms/demo/coupons")
        .await
        .is_empty());
    s.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_belongs_to_the_buyer_in_the_room_across_skus_and_sales() {
    let s = server().await;
    create_product(&s, "demo", &["P1", "P2"]).await;
    let first = create_sale(&s, "demo", "P1", 5, json!({"per_user_limit": 5})).await;
    create_sale(&s, "demo", "P2", 5, json!({"per_user_limit": 5})).await;
    let mut ann = s.joined(Encoding::Json, "demo", "ann", Role::Viewer).await;
    let order = ann.buy("P1", 1, "same", None).await.unwrap();
    // The same key for another SKU would be a second charge: a conflict.
    assert_eq!(
        ann.buy("P2", 1, "same", None).await,
        Err(ErrorCode::IdempotencyConflict)
    );
    // A new sale on the same SKU does not reset the key.
    s.admin(
        Method::POST,
        &format!("/api/v1/rooms/demo/sales/{}/end", first["id"]),
    )
    .send()
    .await
    .unwrap();
    create_sale(&s, "demo", "P1", 5, json!({"per_user_limit": 5})).await;
    assert_eq!(
        ann.buy("P1", 1, "same", None).await.unwrap()["id"],
        order["id"]
    );
    // Another buyer's identical key is their own.
    let mut bob = s.joined(Encoding::Json, "demo", "bob", Role::Viewer).await;
    assert_ne!(
        bob.buy("P1", 1, "same", None).await.unwrap()["id"],
        order["id"]
    );
    let orders: Vec<Value> = s.admin_get("/api/v1/orders?room=demo").await;
    assert_eq!(orders.len(), 2);
    s.stop().await;
}
