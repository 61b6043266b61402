//! One suite, every backend: each case below runs against SQLite (a temp
//! dir) and PostgreSQL (a fresh database, see `postgres::test_db`), so the
//! two give the same answers to the same writes. Backend-specific tests
//! (the oversell guard, lost connections) live next to their backend.

use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;

use super::{
    CommitStats, CouponTerms, GroupCommitConfig, OrderFilter, ReadBackend, RoomRecord, SaleTerms,
    ShopRecord, Store, StoreError, Write, WriteBackend,
};
use flashcast_wire::commerce::{CouponScope, Discount, OrderStatus, OrderView};
use flashcast_wire::ids::{CouponId, IdemKey, OrderId, ProductId, RoomId, SaleId, Sku, UserId};
use flashcast_wire::money::{Currency, Money};

/// Where a backend keeps its data; every `open` sees the same data.
#[async_trait]
pub(crate) trait Place: Send + Sync {
    async fn open(&self) -> (Box<dyn WriteBackend>, Arc<dyn ReadBackend>);
}

struct SqlitePlace(tempfile::TempDir);

#[async_trait]
impl Place for SqlitePlace {
    async fn open(&self) -> (Box<dyn WriteBackend>, Arc<dyn ReadBackend>) {
        let (w, r) = super::sqlite::open(self.0.path()).unwrap();
        (Box::new(w), Arc::new(r))
    }
}

async fn sqlite_place() -> SqlitePlace {
    SqlitePlace(tempfile::tempdir().unwrap())
}

pub(crate) struct PgPlace(pub super::postgres::test_db::TestDb);

#[async_trait]
impl Place for PgPlace {
    async fn open(&self) -> (Box<dyn WriteBackend>, Arc<dyn ReadBackend>) {
        let (w, r) = super::postgres::open(&self.0.url).await.unwrap();
        (Box::new(w), Arc::new(r))
    }
}

pub(crate) async fn pg_place() -> PgPlace {
    PgPlace(super::postgres::test_db::TestDb::create().await)
}

pub(crate) async fn start(
    place: &dyn Place,
    config: GroupCommitConfig,
) -> (Store, JoinHandle<CommitStats>) {
    let (w, r) = place.open().await;
    Store::new(w, r, config).unwrap()
}

/// Stops the writer (every clone of `store` must be gone) and returns its stats.
async fn stop(store: Store, thread: JoinHandle<CommitStats>) -> CommitStats {
    drop(store);
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap()
}

pub(crate) fn room() -> RoomId {
    RoomId::new("r").unwrap()
}

pub(crate) fn user(u: &str) -> UserId {
    UserId::new(u).unwrap()
}

fn eur(minor: u64) -> Money {
    Money::new(minor, Currency::new("EUR").unwrap())
}

pub(crate) fn sale(id: u64, stock: u32) -> SaleTerms {
    SaleTerms {
        id: SaleId(id),
        room: room(),
        product_id: ProductId(1),
        sku: Sku::new("sku-1").unwrap(),
        label: "Mug / red".into(),
        image: Some("https://img/1.png".into()),
        regular_price: eur(2_000),
        sale_price: eur(1_500),
        stock,
        per_user_limit: 2,
        starts_at: 100,
        ends_at: 10_000,
        payment_window_ms: 1_000,
        created_at: 50,
    }
}

fn coupon(id: u64) -> CouponTerms {
    CouponTerms {
        id: CouponId(id),
        room: room(),
        count: 5,
        discount: Discount::Percent { percent: 10 },
        scope: CouponScope::Sale { sale_id: SaleId(2) },
        expires_at: 9_000,
        created_at: 60,
    }
}

/// A reserved order of `qty` units on `sale`.
pub(crate) fn order(id: u64, sale: u64, buyer: &str, key: &str, qty: u32) -> OrderView {
    OrderView {
        id: OrderId(id),
        room: room(),
        sale_id: SaleId(sale),
        product_id: ProductId(1),
        sku: Sku::new("sku-1").unwrap(),
        label: "Mug / red".into(),
        user_id: user(buyer),
        user_name: format!("Buyer {buyer}"),
        key: IdemKey::new(key).unwrap(),
        qty,
        unit_price: eur(1_500),
        discount_minor: 0,
        total: eur(1_500 * u64::from(qty)),
        coupon_id: None,
        status: OrderStatus::Reserved,
        created_at: 1_000 + id,
        deadline: 2_000 + id,
        paid_at: None,
        closed_at: None,
    }
}

fn ban(i: usize) -> Write {
    Write::Ban {
        room: room(),
        user: user(&format!("u{i}")),
    }
}

fn claim(coupon: u64, who: &str) -> Write {
    Write::ClaimCoupon {
        coupon: CouponId(coupon),
        user: user(who),
        at: 1,
    }
}

fn conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
}

pub(crate) async fn rooms_bans_and_meta_survive_reopen(place: &dyn Place) {
    {
        let (store, thread) = start(place, GroupCommitConfig::default()).await;
        for w in [
            Write::PutRoom(RoomRecord {
                id: room(),
                title: "Show".into(),
                allow_guests: true,
                created_at: 5,
                closed_at: None,
            }),
            Write::PutRoom(RoomRecord {
                id: RoomId::new("a-first").unwrap(),
                title: "Earlier".into(),
                allow_guests: false,
                created_at: 1,
                closed_at: Some(3),
            }),
            Write::Ban {
                room: room(),
                user: user("u"),
            },
            Write::InitMeta {
                key: "k".into(),
                value: "v1".into(),
            },
        ] {
            store.write(w).await.unwrap();
        }
        stop(store, thread).await;
    }
    let (store, thread) = start(place, GroupCommitConfig::default()).await;
    let rooms = store.read().rooms().await.unwrap();
    assert_eq!(
        rooms.iter().map(|r| r.title.as_str()).collect::<Vec<_>>(),
        ["Earlier", "Show"],
        "oldest first"
    );
    assert_eq!(rooms[0].closed_at, Some(3));
    assert!(!rooms[0].allow_guests && rooms[1].allow_guests);
    assert_eq!(store.read().bans(&room()).await.unwrap(), vec![user("u")]);
    let again = Write::InitMeta {
        key: "k".into(),
        value: "v2".into(),
    };
    store.write(again).await.unwrap();
    assert_eq!(store.read().meta("k").await.unwrap().as_deref(), Some("v1"));
    assert_eq!(store.read().meta("nope").await.unwrap(), None);
    let secret = store.get_or_init_meta("s", &|| "x".into()).await.unwrap();
    assert_eq!(secret, "x");
    for w in [
        Write::CloseRoom {
            room: room(),
            at: 9,
        },
        Write::CloseRoom {
            room: room(),
            at: 10,
        },
        Write::Ban {
            room: room(),
            user: user("u"),
        },
        Write::Unban {
            room: room(),
            user: user("u"),
        },
    ] {
        store.write(w).await.unwrap();
    }
    assert_eq!(
        store.read().rooms().await.unwrap()[1].closed_at,
        Some(9),
        "kept the first close"
    );
    assert!(store.read().bans(&room()).await.unwrap().is_empty());
    stop(store, thread).await;
}

pub(crate) async fn concurrent_writes_are_batched_and_every_acknowledged_one_is_durable(
    place: &dyn Place,
) {
    let (store, thread) = start(place, GroupCommitConfig::default()).await;
    let tasks: Vec<_> = (0..2_000)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move { s.write(ban(i)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let reader = store.reader.clone();
    let stats = stop(store, thread).await;
    assert_eq!(stats.writes, 2_000);
    assert!(
        stats.batches < 2_000,
        "concurrent writes share commits: {stats:?}"
    );
    let bans = reader.bans(&room()).await.unwrap();
    assert_eq!(bans.len(), 2_000);
    let mut sorted = bans.clone();
    sorted.sort();
    assert_eq!(bans, sorted, "by user id");
}

pub(crate) async fn a_failing_write_rolls_back_alone(place: &dyn Place) {
    let config = GroupCommitConfig {
        queue: 16,
        max_batch: 16,
    };
    let (store, thread) = start(place, config).await;
    store.write(Write::PutCoupon(coupon(1))).await.unwrap();
    store.write(claim(1, "a")).await.unwrap();
    // One batch: a good write, a payment of an order that is not reserved
    // (its payment row is written, then the conditional update finds
    // nothing), a duplicate claim, a good write.
    let pay = Write::PayOrder {
        order: OrderId(404),
        event_id: "evt".into(),
        at: 1,
    };
    let (b, p, d, c) = tokio::join!(
        store.write(claim(1, "b")),
        store.write(pay),
        store.write(claim(1, "a")),
        store.write(claim(1, "c"))
    );
    assert!(b.is_ok() && c.is_ok(), "{b:?} {c:?}");
    conflict(p);
    assert!(
        matches!(d, Err(StoreError::Backend(_))),
        "the duplicate claim is refused: {d:?}"
    );
    let shop = store.read().shop(&room(), 0, 10).await.unwrap();
    let claims: Vec<_> = shop.coupons[0]
        .claims
        .iter()
        .map(|(u, _)| u.clone())
        .collect();
    assert_eq!(claims, [user("a"), user("b"), user("c")]);
    assert!(
        store.read().payment_events(0).await.unwrap().is_empty(),
        "the failed write left nothing behind"
    );
    stop(store, thread).await;
}

pub(crate) async fn conditional_order_writes_commit_once(place: &dyn Place) {
    let (store, thread) = start(place, GroupCommitConfig::default()).await;
    let close = |id, to| Write::CloseOrder {
        order: OrderId(id),
        to,
        at: 5,
    };
    // No such order: nothing to close.
    conflict(store.write(close(1, OrderStatus::Cancelled)).await);
    assert!(store.read().order(OrderId(1)).await.unwrap().is_none());

    store.write(Write::PutSale(sale(2, 10))).await.unwrap();
    store
        .write(Write::PutOrder(order(10, 2, "a", "k1", 1)))
        .await
        .unwrap();
    store
        .write(Write::PutOrder(order(11, 2, "b", "k1", 1)))
        .await
        .unwrap();
    // Unique per sale, buyer and key: a replayed order is refused.
    let again = store
        .write(Write::PutOrder(order(12, 2, "a", "k1", 1)))
        .await;
    assert!(matches!(again, Err(StoreError::Backend(_))), "{again:?}");
    assert!(store.read().order(OrderId(12)).await.unwrap().is_none());

    let pay = |id, event: &str| Write::PayOrder {
        order: OrderId(id),
        event_id: event.into(),
        at: 7,
    };
    store.write(pay(10, "evt-1")).await.unwrap();
    // A replayed event is refused (unique id), a second payment conflicts.
    assert!(store.write(pay(10, "evt-1")).await.is_err());
    conflict(store.write(pay(10, "evt-2")).await);
    let events = store.read().payment_events(0).await.unwrap();
    assert_eq!(events, vec![("evt-1".to_string(), 7)]);
    assert!(store.read().payment_events(8).await.unwrap().is_empty());
    let paid = store.read().order(OrderId(10)).await.unwrap().unwrap();
    assert_eq!((paid.status, paid.paid_at), (OrderStatus::Paid, Some(7)));

    // A paid order cannot expire, it can be cancelled, once.
    conflict(store.write(close(10, OrderStatus::Expired)).await);
    store
        .write(close(10, OrderStatus::Cancelled))
        .await
        .unwrap();
    conflict(store.write(close(10, OrderStatus::Cancelled)).await);
    store.write(close(11, OrderStatus::Expired)).await.unwrap();
    conflict(store.write(pay(11, "evt-3")).await);
    let closed = store.read().order(OrderId(11)).await.unwrap().unwrap();
    assert_eq!(
        (closed.status, closed.closed_at),
        (OrderStatus::Expired, Some(5))
    );
    assert!(
        store.write(close(11, OrderStatus::Paid)).await.is_err(),
        "closing only expires or cancels"
    );

    store
        .write(Write::EndSale {
            sale: SaleId(2),
            at: 8,
        })
        .await
        .unwrap();
    conflict(
        store
            .write(Write::EndSale {
                sale: SaleId(2),
                at: 9,
            })
            .await,
    );
    conflict(
        store
            .write(Write::EndSale {
                sale: SaleId(404),
                at: 9,
            })
            .await,
    );
    let shop = store.read().shop(&room(), 0, 10).await.unwrap();
    assert_eq!(shop.sales[0].ended_early_at, Some(8));
    assert!(shop.sales[0].held.is_empty(), "no live order holds units");
    assert_eq!(shop.sales[0].orders, 2);
    stop(store, thread).await;
}

pub(crate) async fn shop_and_order_reads_give_back_what_was_written(place: &dyn Place) {
    let (store, thread) = start(place, GroupCommitConfig::default()).await;
    let other = RoomId::new("other").unwrap();
    let mut with_coupon = order(22, 2, "b", "k2", 2);
    with_coupon.coupon_id = Some(CouponId(3));
    with_coupon.discount_minor = 300;
    with_coupon.total = eur(2_700);
    let body = r#"{"id":1, "title":"Mug",  "b":[1,2]}"#;
    for w in [
        Write::PutProduct {
            id: ProductId(1),
            room: room(),
            body: "{}".into(),
        },
        Write::PutProduct {
            id: ProductId(1),
            room: room(),
            body: body.into(),
        },
        Write::PutProduct {
            id: ProductId(7),
            room: other.clone(),
            body: "{}".into(),
        },
        Write::SetPin {
            room: room(),
            product: Some(ProductId(1)),
        },
        Write::PutSale(sale(2, 10)),
        Write::PutCoupon(coupon(3)),
        claim(3, "b"),
        claim(3, "c"),
        Write::PutOrder(order(20, 2, "a", "k1", 1)),
        Write::PutOrder(order(21, 2, "a", "k2", 2)),
        Write::PutOrder(with_coupon.clone()),
        Write::PutOrder(order(23, 2, "c", "k1", 1)),
        Write::CloseOrder {
            order: OrderId(23),
            to: OrderStatus::Cancelled,
            at: 30,
        },
    ] {
        store.write(w).await.unwrap();
    }
    let read = store.read();
    let shop = read.shop(&room(), 0, 10).await.unwrap();
    assert_eq!(shop.products, vec![body.to_string()], "byte for byte");
    assert_eq!(shop.pin, Some(ProductId(1)));
    assert_eq!(shop.sales.len(), 1);
    assert_eq!(shop.sales[0].terms, sale(2, 10));
    assert_eq!(shop.sales[0].ended_early_at, None);
    assert_eq!(shop.sales[0].held, vec![(user("a"), 3), (user("b"), 2)]);
    assert_eq!(shop.sales[0].orders, 4);
    assert_eq!(shop.coupons.len(), 1);
    assert_eq!(shop.coupons[0].terms, coupon(3));
    assert_eq!(
        shop.coupons[0].claims,
        vec![(user("b"), true), (user("c"), false)]
    );
    assert_eq!(
        shop.keys.iter().map(|o| o.id.0).collect::<Vec<_>>(),
        [23, 22, 21, 20],
        "newest first"
    );
    assert_eq!(shop.keys[1], with_coupon, "an order reads back whole");
    assert!(shop.keys_complete);
    let few = read.shop(&room(), 0, 2).await.unwrap();
    assert_eq!(few.keys.len(), 2);
    assert!(!few.keys_complete, "more than asked");
    // Created at 1_000 + id: 22 and 23 are recent.
    let recent = read.shop(&room(), 1_022, 10).await.unwrap();
    assert_eq!(recent.keys.len(), 2);
    assert!(!recent.keys_complete, "older orders left out");
    store
        .write(Write::SetPin {
            room: room(),
            product: None,
        })
        .await
        .unwrap();
    assert_eq!(read.shop(&room(), 0, 10).await.unwrap().pin, None);
    let empty = read
        .shop(&RoomId::new("none").unwrap(), 0, 10)
        .await
        .unwrap();
    assert_eq!(
        empty,
        ShopRecord {
            keys_complete: true,
            ..Default::default()
        }
    );

    assert_eq!(read.next_id().await.unwrap(), 24);
    let by_key = read
        .order_by_key(&room(), &user("a"), &IdemKey::new("k2").unwrap())
        .await
        .unwrap();
    assert_eq!(by_key.map(|o| o.id), Some(OrderId(21)));
    assert!(read
        .order_by_key(&other, &user("a"), &IdemKey::new("k2").unwrap())
        .await
        .unwrap()
        .is_none());
    let ids = |v: Vec<OrderView>| v.into_iter().map(|o| o.id.0).collect::<Vec<_>>();
    assert_eq!(ids(read.reserved_orders().await.unwrap()), [20, 21, 22]);
    let filter = |f: OrderFilter| OrderFilter { limit: 10, ..f };
    assert_eq!(
        ids(read.orders(&filter(OrderFilter::default())).await.unwrap()),
        [20, 21, 22, 23]
    );
    let by_user = filter(OrderFilter {
        user: Some(user("a")),
        ..Default::default()
    });
    assert_eq!(ids(read.orders(&by_user).await.unwrap()), [20, 21]);
    let paged = OrderFilter {
        room: Some(room()),
        sale: Some(SaleId(2)),
        after: Some(OrderId(20)),
        limit: 2,
        ..Default::default()
    };
    assert_eq!(ids(read.orders(&paged).await.unwrap()), [21, 22]);
    let cancelled = filter(OrderFilter {
        status: Some(OrderStatus::Cancelled),
        ..Default::default()
    });
    assert_eq!(ids(read.orders(&cancelled).await.unwrap()), [23]);
    let elsewhere = filter(OrderFilter {
        room: Some(other),
        ..Default::default()
    });
    assert!(read.orders(&elsewhere).await.unwrap().is_empty());

    // Deadlines are 2_000 + id: 20 and 21 are overdue at 2_022, 22 is not.
    store
        .write(Write::ExpireOverdue { now: 2_022 })
        .await
        .unwrap();
    assert_eq!(ids(read.reserved_orders().await.unwrap()), [22]);
    let expired = read.order(OrderId(20)).await.unwrap().unwrap();
    assert_eq!(
        (expired.status, expired.closed_at),
        (OrderStatus::Expired, Some(2_022))
    );
    let shop = read.shop(&room(), 0, 10).await.unwrap();
    assert_eq!(shop.sales[0].held, vec![(user("b"), 2)]);
    stop(store, thread).await;
}

/// Cluster mode's fence: a room's writes commit only under its recorded
/// term; a new owner's claim (a higher term) shuts the old owner out, a
/// stale claim fails, and a refused write leaves nothing behind.
pub(crate) async fn writes_are_fenced_by_the_rooms_term(place: &dyn Place) {
    let (store, thread) = start(place, GroupCommitConfig::default()).await;
    let fenced = |term, w: Write| Write::Fenced {
        room: room(),
        term,
        write: Box::new(w),
    };
    let claim = |term| Write::ClaimRoom { room: room(), term };
    store.write(Write::PutSale(sale(2, 10))).await.unwrap();

    // Nobody claimed the room: a fenced write is refused.
    conflict(
        store
            .write(fenced(5, Write::PutOrder(order(10, 2, "a", "k", 1))))
            .await,
    );
    store.write(claim(5)).await.unwrap();
    store
        .write(fenced(5, Write::PutOrder(order(10, 2, "a", "k", 1))))
        .await
        .unwrap();
    // A new owner claims the room: the old one is shut out.
    store.write(claim(7)).await.unwrap();
    let stale = store
        .write(fenced(5, Write::PutOrder(order(11, 2, "b", "k", 1))))
        .await;
    match &stale {
        Err(StoreError::Conflict(why)) => assert!(why.contains("fenced"), "{why}"),
        other => panic!("a stale owner committed: {other:?}"),
    }
    assert!(store.read().order(OrderId(11)).await.unwrap().is_none());
    store
        .write(fenced(7, Write::PutOrder(order(12, 2, "c", "k", 1))))
        .await
        .unwrap();
    // A stale or repeated claim fails; the term stays.
    conflict(store.write(claim(6)).await);
    conflict(store.write(claim(7)).await);
    store
        .write(fenced(7, Write::PutOrder(order(13, 2, "d", "k", 1))))
        .await
        .unwrap();
    let held = store.read().shop(&room(), 0, 10).await.unwrap().sales[0]
        .held
        .len();
    assert_eq!(held, 3, "the orders of terms 5 and 7, not the stale one");
    stop(store, thread).await;
}

/// The cases, as tests of one backend (`$place` opens a fresh place).
macro_rules! cases {
    ($place:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn rooms_bans_and_meta_survive_reopen() {
            super::rooms_bans_and_meta_survive_reopen(&$place().await).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_writes_are_batched_and_every_acknowledged_one_is_durable() {
            super::concurrent_writes_are_batched_and_every_acknowledged_one_is_durable(
                &$place().await,
            )
            .await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_failing_write_rolls_back_alone() {
            super::a_failing_write_rolls_back_alone(&$place().await).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conditional_order_writes_commit_once() {
            super::conditional_order_writes_commit_once(&$place().await).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn writes_are_fenced_by_the_rooms_term() {
            super::writes_are_fenced_by_the_rooms_term(&$place().await).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn shop_and_order_reads_give_back_what_was_written() {
            super::shop_and_order_reads_give_back_what_was_written(&$place().await).await
        }
    };
}

mod sqlite {
    cases!(super::sqlite_place);
}

mod postgres {
    cases!(super::pg_place);
}
