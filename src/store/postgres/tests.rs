//! What only the PostgreSQL store does: the oversell guard, concurrent
//! schema creation, a lost connection. The shared behaviour is tested by
//! `store::conformance`, against both backends.

use std::time::Duration;

use super::test_db::{query, TestDb};
use crate::store::conformance::{order, sale, user};
use crate::store::{GroupCommitConfig, Store, StoreError, Write};
use flashcast_wire::commerce::OrderStatus;
use flashcast_wire::ids::{OrderId, RoomId};

async fn sold(db: &TestDb, sale: u64) -> i64 {
    query(
        &db.url,
        &format!("SELECT sold FROM sales WHERE id = {sale}"),
    )
    .await[0]
        .get(0)
}

fn conflict(r: Result<(), StoreError>) {
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_an_oversell_even_past_the_in_memory_checks() {
    let db = TestDb::create().await;
    let store = Store::open_postgres(&db.url, GroupCommitConfig::default())
        .await
        .unwrap();
    store.write(Write::PutSale(sale(2, 3))).await.unwrap();
    // Straight to the store: nothing in memory counts the stock here.
    store
        .write(Write::PutOrder(order(10, 2, "a", "k1", 2)))
        .await
        .unwrap();
    conflict(
        store
            .write(Write::PutOrder(order(11, 2, "b", "k1", 2)))
            .await,
    );
    assert!(
        store.read().order(OrderId(11)).await.unwrap().is_none(),
        "the refused order left nothing behind"
    );
    assert_eq!(sold(&db, 2).await, 2);
    // An order that holds nothing takes nothing; a sale that is missing
    // cannot be sold from.
    let mut gone = order(12, 2, "c", "k1", 5);
    gone.status = OrderStatus::Expired;
    store.write(Write::PutOrder(gone)).await.unwrap();
    conflict(
        store
            .write(Write::PutOrder(order(13, 404, "c", "k2", 1)))
            .await,
    );
    // Closing gives the units back: cancel (paid), expire, overdue.
    store
        .write(Write::PutOrder(order(14, 2, "b", "k2", 1)))
        .await
        .unwrap();
    assert_eq!(sold(&db, 2).await, 3, "exactly the stock");
    conflict(
        store
            .write(Write::PutOrder(order(15, 2, "d", "k1", 1)))
            .await,
    );
    store
        .write(Write::PayOrder {
            order: OrderId(10),
            event_id: "e".into(),
            at: 1,
        })
        .await
        .unwrap();
    store
        .write(Write::CloseOrder {
            order: OrderId(10),
            to: OrderStatus::Cancelled,
            at: 2,
        })
        .await
        .unwrap();
    assert_eq!(sold(&db, 2).await, 1);
    store
        .write(Write::PutOrder(order(16, 2, "d", "k1", 2)))
        .await
        .unwrap();
    store
        .write(Write::CloseOrder {
            order: OrderId(14),
            to: OrderStatus::Expired,
            at: 2,
        })
        .await
        .unwrap();
    assert_eq!(sold(&db, 2).await, 2);
    store
        .write(Write::ExpireOverdue { now: u64::MAX >> 1 })
        .await
        .unwrap();
    assert_eq!(sold(&db, 2).await, 0);
    let shop = store
        .read()
        .shop(&RoomId::new("r").unwrap(), 0, 10)
        .await
        .unwrap();
    assert!(shop.sales[0].held.is_empty());
    assert_eq!(shop.sales[0].orders, 4, "10, 12, 14 and 16");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_buyers_never_take_more_than_the_stock() {
    let db = TestDb::create().await;
    let store = Store::open_postgres(&db.url, GroupCommitConfig::default())
        .await
        .unwrap();
    store.write(Write::PutSale(sale(2, 50))).await.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let s = store.clone();
            let o = order(100 + i, 2, &format!("u{i}"), "k", 1);
            tokio::spawn(async move { s.write(Write::PutOrder(o)).await })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 50);
    assert_eq!(sold(&db, 2).await, 50);
    let shop = store
        .read()
        .shop(&RoomId::new("r").unwrap(), 0, 10)
        .await
        .unwrap();
    let held: u32 = shop.sales[0].held.iter().map(|(_, q)| q).sum();
    assert_eq!(held, 50, "sold agrees with what the live orders hold");
    assert_eq!(shop.sales[0].orders, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_creating_the_schema_at_once_both_open() {
    let db = TestDb::create().await;
    let config = GroupCommitConfig::default();
    let (a, b) = tokio::join!(
        Store::open_postgres(&db.url, config),
        Store::open_postgres(&db.url, config)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    a.write(Write::PutSale(sale(2, 3))).await.unwrap();
    assert_eq!(b.read().next_id().await.unwrap(), 3);
    // And again on an existing schema.
    let c = Store::open_postgres(&db.url, config).await.unwrap();
    assert_eq!(c.read().next_id().await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_fails_its_batch_and_the_next_batch_reconnects() {
    let db = TestDb::create().await;
    let store = Store::open_postgres(&db.url, GroupCommitConfig::default())
        .await
        .unwrap();
    let ban = |u: &str| Write::Ban {
        room: RoomId::new("r").unwrap(),
        user: user(u),
    };
    store.write(ban("a")).await.unwrap();
    // Hold a lock the next write needs, so that its batch is in flight
    // when the writer's session is killed.
    let (blocker, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    blocker
        .batch_execute("BEGIN; LOCK TABLE bans IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let stuck = tokio::spawn({
        let store = store.clone();
        async move { store.write(ban("b")).await }
    });
    let pid_sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                   AND application_name = 'flashcast-writer' AND wait_event_type = 'Lock'";
    let mut killed = false;
    for _ in 0..200 {
        if let Some(row) = query(&db.url, pid_sql).await.first() {
            let pid: i32 = row.get(0);
            query(&db.url, &format!("SELECT pg_terminate_backend({pid})")).await;
            killed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(killed, "the writer never waited on the lock");
    let lost = tokio::time::timeout(Duration::from_secs(10), stuck)
        .await
        .expect("the write failed promptly, not hung")
        .unwrap();
    match lost {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("connection lost"), "{msg}"),
        other => panic!("expected a backend error, got {other:?}"),
    }
    blocker.batch_execute("ROLLBACK").await.unwrap();
    store.write(ban("c")).await.unwrap();
    let bans = store.read().bans(&RoomId::new("r").unwrap()).await.unwrap();
    assert_eq!(
        bans,
        vec![user("a"), user("c")],
        "the lost batch left nothing"
    );
    // The readers recover as well, without a failed read: a read is retried
    // once on a new session.
    query(
        &db.url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'flashcast-reader'",
    )
    .await;
    for _ in 0..super::READ_POOL * 2 {
        let bans = store.read().bans(&RoomId::new("r").unwrap()).await;
        assert_eq!(bans.unwrap().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_commits_synchronously_whatever_the_server_default() {
    let db = TestDb::create().await;
    // The database says "off"; the store's sessions must not inherit it.
    let off = format!("ALTER DATABASE {} SET synchronous_commit = off", db.name);
    query(&db.url, &off).await;
    let io = super::PgIo::start().unwrap();
    let config = super::parse_url(&db.url, "writer").unwrap();
    let mut conn = io.connect(&config).await.unwrap();
    let rows = conn.query("SHOW synchronous_commit", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, &str>(0), "on");
    let plain = query(&db.url, "SHOW synchronous_commit").await;
    assert_eq!(plain[0].get::<_, &str>(0), "off", "the default was off");
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let r = Store::open_postgres(
        "postgres://postgres@127.0.0.1:1/none",
        GroupCommitConfig::default(),
    )
    .await;
    match r {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("postgres connect"), "{msg}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected to nothing"),
    }
}
