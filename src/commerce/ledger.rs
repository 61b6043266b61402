//! The durable side of commerce: the SQLite schema, the writes (each one a
//! closure run by the group-commit writer inside its batch transaction), the
//! start-up load, and the order queries of the admin API.
//!
//! Writes that change an order's status are conditional on the status they
//! expect (`WHERE status = 'reserved'`), so two racing changes can never both
//! commit.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::coupon::CouponTerms;
use super::sale::SaleTerms;
use crate::store::group_commit::{AfterCommit, GroupCommit, GroupCommitConfig, WriteOp};
use crate::store::{StoreError, StoreResult};
use flashcast_wire::commerce::Product;
use flashcast_wire::commerce::{CouponScope, Discount};
use flashcast_wire::commerce::{OrderStatus, OrderView};
use flashcast_wire::ids::{CouponId, IdemKey, OrderId, ProductId, RoomId, SaleId, Sku, UserId};
use flashcast_wire::money::{Currency, Money};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY,
    room TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pins (
    room TEXT PRIMARY KEY,
    product_id INTEGER
);
CREATE TABLE IF NOT EXISTS sales (
    id INTEGER PRIMARY KEY,
    room TEXT NOT NULL,
    product_id INTEGER NOT NULL,
    sku TEXT NOT NULL,
    label TEXT NOT NULL,
    image TEXT,
    currency TEXT NOT NULL,
    regular_minor INTEGER NOT NULL,
    sale_minor INTEGER NOT NULL,
    stock INTEGER NOT NULL CHECK (stock > 0),
    per_user_limit INTEGER NOT NULL CHECK (per_user_limit > 0),
    starts_at INTEGER NOT NULL,
    ends_at INTEGER NOT NULL,
    ended_early_at INTEGER,
    payment_window_ms INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS coupons (
    id INTEGER PRIMARY KEY,
    room TEXT NOT NULL,
    count INTEGER NOT NULL CHECK (count > 0),
    discount TEXT NOT NULL,
    scope TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS coupon_claims (
    coupon_id INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    claimed_at INTEGER NOT NULL,
    PRIMARY KEY (coupon_id, user_id)
);
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY,
    room TEXT NOT NULL,
    sale_id INTEGER NOT NULL,
    product_id INTEGER NOT NULL,
    sku TEXT NOT NULL,
    label TEXT NOT NULL,
    user_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    qty INTEGER NOT NULL CHECK (qty > 0),
    currency TEXT NOT NULL,
    unit_minor INTEGER NOT NULL,
    discount_minor INTEGER NOT NULL,
    total_minor INTEGER NOT NULL,
    coupon_id INTEGER,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    deadline INTEGER NOT NULL,
    paid_at INTEGER,
    closed_at INTEGER,
    UNIQUE (sale_id, user_id, idem_key)
);
CREATE INDEX IF NOT EXISTS orders_by_room ON orders (room, id);
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, id);
CREATE INDEX IF NOT EXISTS orders_by_sale ON orders (sale_id, id);
CREATE TABLE IF NOT EXISTS payments (
    event_id TEXT PRIMARY KEY,
    order_id INTEGER NOT NULL,
    received_at INTEGER NOT NULL
);
";

/// The writer and a reader on the store's database file.
pub struct Ledger {
    pub writer: GroupCommit,
    reader: Mutex<Connection>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn conversion(e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
}

fn id<T>(
    s: String,
    parse: fn(&str) -> Result<T, flashcast_wire::ids::InvalidId>,
) -> rusqlite::Result<T> {
    parse(&s).map_err(conversion)
}

fn json<T: serde::de::DeserializeOwned>(s: String) -> rusqlite::Result<T> {
    serde_json::from_str(&s).map_err(conversion)
}

fn currency(s: String) -> rusqlite::Result<Currency> {
    Currency::new(&s).map_err(conversion)
}

fn to_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("commerce values serialize")
}

/// Everything commerce keeps, as loaded at start-up.
#[derive(Default)]
pub struct Loaded {
    pub products: Vec<Product>,
    pub pins: Vec<(RoomId, ProductId)>,
    pub sales: Vec<(SaleTerms, Option<u64>)>,
    pub coupons: Vec<CouponTerms>,
    pub claims: Vec<(CouponId, UserId)>,
    pub orders: Vec<OrderView>,
    /// Payment event ids received since the given time (replay window).
    pub recent_events: Vec<(String, u64)>,
    pub next_id: u64,
    /// Reservations found overdue and expired during the load.
    pub expired_at_start: usize,
}

/// A filter for the order queries.
#[derive(Debug, Default, Clone)]
pub struct OrderFilter {
    pub room: Option<RoomId>,
    pub user: Option<UserId>,
    pub sale: Option<SaleId>,
    pub status: Option<OrderStatus>,
    /// Only orders with a larger id (paging).
    pub after: Option<OrderId>,
    pub limit: usize,
}

impl Ledger {
    /// Opens the writer and a reader on `dir/flashcast.db`.
    pub fn open(dir: &Path, config: GroupCommitConfig) -> StoreResult<Ledger> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let path = dir.join("flashcast.db");
        let (writer, _thread) = GroupCommit::open(&path, config, |c| c.execute_batch(SCHEMA))?;
        let reader = Connection::open(&path).map_err(backend)?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        Ok(Ledger {
            writer,
            reader: Mutex::new(reader),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(backend)
    }

    /// Expires every reservation whose deadline passed while the server was
    /// down (durably, before anything else), then loads the state.
    pub fn load(&self, now: u64, events_since: u64) -> StoreResult<Loaded> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let expired = conn
            .execute(
                "UPDATE orders SET status = 'expired', closed_at = ?1
                 WHERE status = 'reserved' AND deadline < ?1",
                params![now as i64],
            )
            .map_err(backend)?;
        load_all(&conn, events_since)
            .map(|mut l| {
                l.expired_at_start = expired;
                l
            })
            .map_err(backend)
    }

    pub fn orders(&self, filter: &OrderFilter) -> StoreResult<Vec<OrderView>> {
        self.read(|c| query_orders(c, filter))
    }

    pub fn order(&self, order: OrderId) -> StoreResult<Option<OrderView>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?1"),
                params![order.0 as i64],
                order_row,
            )
            .optional()
        })
    }

    pub async fn write(&self, op: WriteOp) -> StoreResult<()> {
        self.writer.write(op).await
    }

    /// A write whose `then` runs on the writer thread once it is durable
    /// (see `GroupCommit::write_then`).
    pub async fn write_then(&self, op: WriteOp, then: AfterCommit) -> StoreResult<()> {
        self.writer.write_then(op, then).await
    }
}

fn load_all(c: &Connection, events_since: u64) -> rusqlite::Result<Loaded> {
    let mut l = Loaded::default();
    let mut stmt = c.prepare("SELECT body FROM products ORDER BY id")?;
    for body in stmt.query_map([], |r| r.get::<_, String>(0))? {
        l.products.push(json(body?)?);
    }
    let mut stmt = c.prepare("SELECT room, product_id FROM pins WHERE product_id IS NOT NULL")?;
    for pin in stmt.query_map([], |r| {
        Ok((
            id(r.get(0)?, RoomId::new)?,
            ProductId(r.get::<_, i64>(1)? as u64),
        ))
    })? {
        l.pins.push(pin?);
    }
    let mut stmt = c.prepare(
        "SELECT id, room, product_id, sku, label, image, currency, regular_minor, sale_minor,
                stock, per_user_limit, starts_at, ends_at, ended_early_at, payment_window_ms,
                created_at FROM sales ORDER BY id",
    )?;
    for sale in stmt.query_map([], |r| {
        let cur = currency(r.get(6)?)?;
        Ok((
            SaleTerms {
                id: SaleId(r.get::<_, i64>(0)? as u64),
                room: id(r.get(1)?, RoomId::new)?,
                product_id: ProductId(r.get::<_, i64>(2)? as u64),
                sku: id(r.get(3)?, Sku::new)?,
                label: r.get(4)?,
                image: r.get(5)?,
                regular_price: Money::new(r.get::<_, i64>(7)? as u64, cur),
                sale_price: Money::new(r.get::<_, i64>(8)? as u64, cur),
                stock: r.get(9)?,
                per_user_limit: r.get(10)?,
                starts_at: r.get::<_, i64>(11)? as u64,
                ends_at: r.get::<_, i64>(12)? as u64,
                payment_window_ms: r.get::<_, i64>(14)? as u64,
                created_at: r.get::<_, i64>(15)? as u64,
            },
            r.get::<_, Option<i64>>(13)?.map(|t| t as u64),
        ))
    })? {
        l.sales.push(sale?);
    }
    let mut stmt = c.prepare(
        "SELECT id, room, count, discount, scope, expires_at, created_at FROM coupons ORDER BY id",
    )?;
    for coupon in stmt.query_map([], |r| {
        Ok(CouponTerms {
            id: CouponId(r.get::<_, i64>(0)? as u64),
            room: id(r.get(1)?, RoomId::new)?,
            count: r.get(2)?,
            discount: json::<Discount>(r.get(3)?)?,
            scope: json::<CouponScope>(r.get(4)?)?,
            expires_at: r.get::<_, i64>(5)? as u64,
            created_at: r.get::<_, i64>(6)? as u64,
        })
    })? {
        l.coupons.push(coupon?);
    }
    let mut stmt = c.prepare("SELECT coupon_id, user_id FROM coupon_claims")?;
    for claim in stmt.query_map([], |r| {
        Ok((
            CouponId(r.get::<_, i64>(0)? as u64),
            id(r.get(1)?, UserId::new)?,
        ))
    })? {
        l.claims.push(claim?);
    }
    let mut stmt = c.prepare(&format!("SELECT {ORDER_COLUMNS} FROM orders ORDER BY id"))?;
    for order in stmt.query_map([], order_row)? {
        l.orders.push(order?);
    }
    let mut stmt =
        c.prepare("SELECT event_id, received_at FROM payments WHERE received_at >= ?1")?;
    for e in stmt.query_map(params![events_since as i64], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })? {
        l.recent_events.push(e?);
    }
    let max: i64 = c.query_row(
        "SELECT max(m) FROM (
             SELECT coalesce(max(id), 0) AS m FROM products
             UNION ALL SELECT coalesce(max(id), 0) FROM sales
             UNION ALL SELECT coalesce(max(id), 0) FROM coupons
             UNION ALL SELECT coalesce(max(id), 0) FROM orders)",
        [],
        |r| r.get(0),
    )?;
    l.next_id = max as u64 + 1;
    Ok(l)
}

const ORDER_COLUMNS: &str = "id, room, sale_id, product_id, sku, label, user_id, user_name, \
    idem_key, qty, currency, unit_minor, discount_minor, total_minor, coupon_id, status, \
    created_at, deadline, paid_at, closed_at";

fn order_row(r: &Row<'_>) -> rusqlite::Result<OrderView> {
    let cur = currency(r.get(10)?)?;
    let status: String = r.get(15)?;
    Ok(OrderView {
        id: OrderId(r.get::<_, i64>(0)? as u64),
        room: id(r.get(1)?, RoomId::new)?,
        sale_id: SaleId(r.get::<_, i64>(2)? as u64),
        product_id: ProductId(r.get::<_, i64>(3)? as u64),
        sku: id(r.get(4)?, Sku::new)?,
        label: r.get(5)?,
        user_id: id(r.get(6)?, UserId::new)?,
        user_name: r.get(7)?,
        key: id(r.get(8)?, IdemKey::new)?,
        qty: r.get(9)?,
        unit_price: Money::new(r.get::<_, i64>(11)? as u64, cur),
        discount_minor: r.get::<_, i64>(12)? as u64,
        total: Money::new(r.get::<_, i64>(13)? as u64, cur),
        coupon_id: r.get::<_, Option<i64>>(14)?.map(|c| CouponId(c as u64)),
        status: OrderStatus::parse(&status).ok_or_else(|| {
            conversion(std::io::Error::other(format!("bad order status {status}")))
        })?,
        created_at: r.get::<_, i64>(16)? as u64,
        deadline: r.get::<_, i64>(17)? as u64,
        paid_at: r.get::<_, Option<i64>>(18)?.map(|t| t as u64),
        closed_at: r.get::<_, Option<i64>>(19)?.map(|t| t as u64),
    })
}

fn query_orders(c: &Connection, f: &OrderFilter) -> rusqlite::Result<Vec<OrderView>> {
    let mut sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id > ?1");
    let mut args: Vec<rusqlite::types::Value> = vec![(f.after.map_or(0, |o| o.0) as i64).into()];
    let mut add = |clause: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&format!(" AND {clause} = ?{}", args.len()));
    };
    if let Some(room) = &f.room {
        add("room", room.as_str().to_string().into());
    }
    if let Some(user) = &f.user {
        add("user_id", user.as_str().to_string().into());
    }
    if let Some(sale) = f.sale {
        add("sale_id", (sale.0 as i64).into());
    }
    if let Some(status) = f.status {
        add("status", status.as_str().to_string().into());
    }
    sql.push_str(&format!(" ORDER BY id LIMIT {}", f.limit));
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), order_row)?;
    rows.collect()
}

// ------------------------------------------------------------------ writes

/// Fails the write (rolling back its savepoint) unless exactly one row
/// changed: the state it expected was not there.
fn one_row(changed: usize, what: &str) -> rusqlite::Result<()> {
    if changed == 1 {
        Ok(())
    } else {
        Err(rusqlite::Error::ToSqlConversionFailure(Box::new(
            std::io::Error::other(format!("{what}: expected state not found")),
        )))
    }
}

pub fn put_product(p: &Product) -> WriteOp {
    let (id, room, body) = (p.id.0 as i64, p.room.to_string(), to_json(p));
    Box::new(move |tx: &Transaction<'_>| {
        tx.execute(
            "INSERT INTO products (id, room, body) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET body = excluded.body",
            params![id, room, body],
        )
        .map(|_| ())
    })
}

pub fn set_pin(room: &RoomId, product: Option<ProductId>) -> WriteOp {
    let room = room.to_string();
    let product = product.map(|p| p.0 as i64);
    Box::new(move |tx: &Transaction<'_>| {
        tx.execute(
            "INSERT INTO pins (room, product_id) VALUES (?1, ?2)
             ON CONFLICT(room) DO UPDATE SET product_id = excluded.product_id",
            params![room, product],
        )
        .map(|_| ())
    })
}

pub fn insert_sale(t: &SaleTerms) -> WriteOp {
    let t = t.clone();
    Box::new(move |tx: &Transaction<'_>| {
        tx.execute(
            "INSERT INTO sales (id, room, product_id, sku, label, image, currency, regular_minor,
                 sale_minor, stock, per_user_limit, starts_at, ends_at, payment_window_ms, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                t.id.0 as i64,
                t.room.as_str(),
                t.product_id.0 as i64,
                t.sku.as_str(),
                t.label,
                t.image,
                t.sale_price.currency.as_str(),
                t.regular_price.minor as i64,
                t.sale_price.minor as i64,
                t.stock,
                t.per_user_limit,
                t.starts_at as i64,
                t.ends_at as i64,
                t.payment_window_ms as i64,
                t.created_at as i64,
            ],
        )
        .map(|_| ())
    })
}

pub fn end_sale(sale: SaleId, at: u64) -> WriteOp {
    Box::new(move |tx: &Transaction<'_>| {
        let n = tx.execute(
            "UPDATE sales SET ended_early_at = ?2 WHERE id = ?1 AND ended_early_at IS NULL",
            params![sale.0 as i64, at as i64],
        )?;
        one_row(n, "end sale")
    })
}

pub fn insert_coupon(t: &CouponTerms) -> WriteOp {
    let t = t.clone();
    Box::new(move |tx: &Transaction<'_>| {
        tx.execute(
            "INSERT INTO coupons (id, room, count, discount, scope, expires_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                t.id.0 as i64,
                t.room.as_str(),
                t.count,
                to_json(&t.discount),
                to_json(&t.scope),
                t.expires_at as i64,
                t.created_at as i64,
            ],
        )
        .map(|_| ())
    })
}

pub fn insert_claim(coupon: CouponId, user: &UserId, at: u64) -> WriteOp {
    let user = user.to_string();
    Box::new(move |tx: &Transaction<'_>| {
        tx.execute(
            "INSERT INTO coupon_claims (coupon_id, user_id, claimed_at) VALUES (?1, ?2, ?3)",
            params![coupon.0 as i64, user, at as i64],
        )
        .map(|_| ())
    })
}

pub fn insert_order(o: &OrderView) -> WriteOp {
    let o = o.clone();
    Box::new(move |tx: &Transaction<'_>| {
        // Cached: a flash sale commits a thousand of these in one batch.
        tx.prepare_cached(&format!(
            "INSERT INTO orders ({ORDER_COLUMNS}) VALUES
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
        ))?
        .execute(params![
                o.id.0 as i64,
                o.room.as_str(),
                o.sale_id.0 as i64,
                o.product_id.0 as i64,
                o.sku.as_str(),
                o.label,
                o.user_id.as_str(),
                o.user_name,
                o.key.as_str(),
                o.qty,
                o.total.currency.as_str(),
                o.unit_price.minor as i64,
                o.discount_minor as i64,
                o.total.minor as i64,
                o.coupon_id.map(|c| c.0 as i64),
                o.status.as_str(),
                o.created_at as i64,
                o.deadline as i64,
                o.paid_at.map(|t| t as i64),
                o.closed_at.map(|t| t as i64),
            ])
        .map(|_| ())
    })
}

/// Marks a reserved order paid and records the payment event (whose id is
/// unique: a replay cannot commit twice).
pub fn pay_order(order: OrderId, event_id: String, at: u64) -> WriteOp {
    Box::new(move |tx: &Transaction<'_>| {
        tx.execute(
            "INSERT INTO payments (event_id, order_id, received_at) VALUES (?1, ?2, ?3)",
            params![event_id, order.0 as i64, at as i64],
        )?;
        let n = tx.execute(
            "UPDATE orders SET status = 'paid', paid_at = ?2 WHERE id = ?1 AND status = 'reserved'",
            params![order.0 as i64, at as i64],
        )?;
        one_row(n, "pay order")
    })
}

/// Expires or cancels a live order.
pub fn close_order(order: OrderId, to: OrderStatus, at: u64) -> WriteOp {
    assert!(
        !to.is_live(),
        "closing moves an order to expired or cancelled"
    );
    Box::new(move |tx: &Transaction<'_>| {
        let from = if to == OrderStatus::Expired {
            "('reserved')"
        } else {
            "('reserved', 'paid')"
        };
        let n = tx.execute(
            &format!(
                "UPDATE orders SET status = ?2, closed_at = ?3 WHERE id = ?1 AND status IN {from}"
            ),
            params![order.0 as i64, to.as_str(), at as i64],
        )?;
        one_row(n, "close order")
    })
}
