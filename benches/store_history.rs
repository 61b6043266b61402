//! Start-up time and memory as the stored history grows: the real server
//! binary is started on a data directory holding 20, then 100, then 200
//! ended shows of 1,000 orders each (plus one open show with a live sale,
//! the same every time), and its start-up time (spawn to "is running")
//! and resident memory (VmRSS, VmHWM from /proc) are printed. Both must
//! stay flat: start-up loads the open show and the open reservations,
//! never the history.
//!
//! `cargo test --release --bench store_history -- --full` (the figures in
//! docs/benchmarks.md); plain `cargo test --bench store_history` runs a
//! small smoke version (2, 5, 10 shows of 200 orders) in a few seconds.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flashcast::store::{CouponTerms, RoomRecord, SaleTerms, Store, Write};
use flashcast_wire::commerce::{CouponScope, Discount, OrderStatus, OrderView};
use flashcast_wire::ids::{IdemKey, OrderId, ProductId, RoomId, SaleId, Sku, UserId};
use flashcast_wire::money::{Currency, Money};

/// The server binary; `FLASHCAST_BENCH_BIN` runs another build (an older
/// one, to compare) on the same history.
fn bin() -> String {
    std::env::var("FLASHCAST_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_flashcast").into())
}

struct History {
    store: Store,
    next_id: u64,
    shows: usize,
}

impl History {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// One show: a room, a product, a sale (and a coupon drop), `orders`
    /// orders; ended unless `open`.
    async fn show(&mut self, name: &str, orders: usize, open: bool) {
        let now = now_ms();
        let usd = Currency::new("USD").unwrap();
        let room = RoomId::new(name).unwrap();
        let product = ProductId(self.id());
        let sale = SaleId(self.id());
        let sku = Sku::new("TEE-M").unwrap();
        let mut writes = vec![
            Write::PutRoom(RoomRecord {
                id: room.clone(),
                title: format!("Show {name}"),
                allow_guests: true,
                created_at: now,
                closed_at: (!open).then_some(now),
            }),
            Write::PutProduct {
                id: product,
                room: room.clone(),
                body: serde_json::json!({
                    "id": product, "room": room, "title": "Tee", "description": "",
                    "images": [], "currency": "USD",
                    "variants": [{"sku": sku, "options": {"size": "M"}, "price_minor": 3900}]
                })
                .to_string(),
            },
            Write::PutSale(SaleTerms {
                id: sale,
                room: room.clone(),
                product_id: product,
                sku: sku.clone(),
                label: "Tee (M)".into(),
                image: None,
                regular_price: Money::new(3900, usd),
                sale_price: Money::new(1900, usd),
                stock: orders as u32 * 2,
                per_user_limit: 5,
                starts_at: now - 60_000,
                ends_at: if open { now + 3_600_000 } else { now - 1_000 },
                payment_window_ms: 600_000,
                created_at: now - 60_000,
            }),
            Write::PutCoupon(CouponTerms {
                id: flashcast_wire::ids::CouponId(self.id()),
                room: room.clone(),
                count: 100,
                discount: Discount::Percent { percent: 10 },
                scope: CouponScope::Room,
                expires_at: now + 3_600_000,
                created_at: now - 60_000,
            }),
        ];
        for i in 0..orders {
            let status = match (open, i % 5) {
                (true, 0) => OrderStatus::Reserved,
                (_, 4) => OrderStatus::Expired,
                _ => OrderStatus::Paid,
            };
            writes.push(Write::PutOrder(OrderView {
                id: OrderId(self.id()),
                room: room.clone(),
                sale_id: sale,
                product_id: product,
                sku: sku.clone(),
                label: "Tee (M)".into(),
                user_id: UserId::new(&format!("buyer-{i}")).unwrap(),
                user_name: format!("Buyer {i}"),
                key: IdemKey::new(&format!("{name}-{i}")).unwrap(),
                qty: 1,
                unit_price: Money::new(1900, usd),
                discount_minor: 0,
                total: Money::new(1900, usd),
                coupon_id: None,
                status,
                created_at: now - 30_000,
                deadline: now + 570_000,
                paid_at: (status == OrderStatus::Paid).then_some(now - 20_000),
                closed_at: (status == OrderStatus::Expired).then_some(now - 10_000),
            }));
        }
        // All at once: the group commit puts them in a few transactions.
        let results =
            futures_util::future::join_all(writes.into_iter().map(|w| self.store.write(w))).await;
        assert!(results.iter().all(Result::is_ok), "history written");
        self.shows += !open as usize;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Starts the binary on `dir`: its start-up time and (VmRSS, VmHWM) in KiB.
fn start(dir: &Path) -> (Duration, u64, u64) {
    let started = Instant::now();
    let mut child = Command::new(bin())
        .args(["--listen", "127.0.0.1:0", "--admin-key", "bench-admin"])
        .args([
            "--token-secret",
            "bench-token",
            "--webhook-secret",
            "bench-hook",
        ])
        .args(["--demo-room", "false", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("banner").unwrap();
        if line.contains("is running at") {
            break;
        }
    }
    let took = started.elapsed();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let kib = |field: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (rss, hwm) = (kib("VmRSS:"), kib("VmHWM:"));
    child.kill().unwrap();
    child.wait().unwrap();
    (took, rss, hwm)
}

fn main() {
    let full = std::env::args().any(|a| a == "--full");
    let (checkpoints, orders): (&[usize], usize) = if full {
        (&[20, 100, 200], 1_000)
    } else {
        (&[2, 5, 10], 200)
    };
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open_sqlite(dir.path(), Default::default()).unwrap();
    let mut history = History {
        store,
        next_id: 0,
        shows: 0,
    };
    rt.block_on(history.show("live", orders, true));
    println!("ended shows | orders stored | db MiB | start-up ms | VmRSS MiB | VmHWM MiB");
    let mut figures = Vec::new();
    for &target in checkpoints {
        while history.shows < target {
            let name = format!("show-{}", history.shows);
            rt.block_on(history.show(&name, orders, false));
        }
        let db = std::fs::metadata(dir.path().join("flashcast.db")).map_or(0, |m| m.len())
            + std::fs::metadata(dir.path().join("flashcast.db-wal")).map_or(0, |m| m.len());
        // The best of three: start-up time is noisy on a busy machine.
        let runs: Vec<_> = (0..3).map(|_| start(dir.path())).collect();
        let took = runs.iter().map(|r| r.0).min().unwrap();
        let rss = runs.iter().map(|r| r.1).max().unwrap();
        let hwm = runs.iter().map(|r| r.2).max().unwrap();
        println!(
            "{target:>11} | {:>13} | {:>6.1} | {:>11} | {:>9.1} | {:>9.1}",
            (target + 1) * orders,
            db as f64 / 1_048_576.0,
            took.as_millis(),
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
        figures.push((took, hwm));
    }
    let (first, last) = (figures[0], figures[figures.len() - 1]);
    assert!(
        last.1 <= first.1 + 16 * 1024,
        "peak memory grew with the history: {} KiB -> {} KiB",
        first.1,
        last.1
    );
    assert!(
        last.0 <= first.0 * 2 + Duration::from_millis(300),
        "start-up time grew with the history: {:?} -> {:?}",
        first.0,
        last.0
    );
}
