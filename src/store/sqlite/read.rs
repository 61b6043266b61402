//! The queries behind [`ReadBackend`], run on tokio's blocking pool through
//! the reader's own connection.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::apply::ORDER_COLUMNS;
use super::backend;
use crate::store::{
    CouponRecord, CouponTerms, OrderFilter, ReadBackend, RoomRecord, SaleRecord, SaleTerms,
    ShopRecord, StoreError, StoreResult,
};
use flashcast_wire::commerce::{CouponScope, Discount};
use flashcast_wire::commerce::{OrderStatus, OrderView};
use flashcast_wire::ids::{CouponId, IdemKey, OrderId, ProductId, RoomId, SaleId, Sku, UserId};
use flashcast_wire::money::{Currency, Money};

/// The reading connection.
pub struct SqliteReader {
    pub(super) conn: Arc<Mutex<Connection>>,
}

impl SqliteReader {
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreResult<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn).map_err(backend)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }
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

const LIVE: &str = "('reserved', 'paid')";

#[async_trait]
impl ReadBackend for SqliteReader {
    async fn rooms(&self) -> StoreResult<Vec<RoomRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, title, allow_guests, created_at, closed_at FROM rooms
                 ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(RoomRecord {
                    id: id(r.get(0)?, RoomId::new)?,
                    title: r.get(1)?,
                    allow_guests: r.get(2)?,
                    created_at: r.get::<_, i64>(3)? as u64,
                    closed_at: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn bans(&self, room: &RoomId) -> StoreResult<Vec<UserId>> {
        let room = room.to_string();
        self.with(move |c| {
            let mut stmt =
                c.prepare("SELECT user_id FROM bans WHERE room = ?1 ORDER BY user_id")?;
            let rows = stmt.query_map([room], |r| id(r.get(0)?, UserId::new))?;
            rows.collect()
        })
        .await
    }

    async fn meta(&self, key: &str) -> StoreResult<Option<String>> {
        let key = key.to_string();
        self.with(move |c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn shop(
        &self,
        room: &RoomId,
        keys_since: u64,
        max_keys: usize,
    ) -> StoreResult<ShopRecord> {
        let room = room.to_string();
        self.with(move |c| shop(c, &room, keys_since, max_keys))
            .await
    }

    async fn reserved_orders(&self) -> StoreResult<Vec<OrderView>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE status = 'reserved' ORDER BY id"
            ))?;
            let rows = stmt.query_map([], order_row)?;
            rows.collect()
        })
        .await
    }

    async fn order(&self, order: OrderId) -> StoreResult<Option<OrderView>> {
        self.with(move |c| {
            c.prepare_cached(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?1"))?
                .query_row(params![order.0 as i64], order_row)
                .optional()
        })
        .await
    }

    async fn order_by_key(
        &self,
        room: &RoomId,
        user: &UserId,
        key: &IdemKey,
    ) -> StoreResult<Option<OrderView>> {
        let (room, user, key) = (room.to_string(), user.to_string(), key.to_string());
        self.with(move |c| {
            c.prepare_cached(&format!(
                "SELECT {ORDER_COLUMNS} FROM orders
                 WHERE room = ?1 AND user_id = ?2 AND idem_key = ?3 ORDER BY id LIMIT 1"
            ))?
            .query_row(params![room, user, key], order_row)
            .optional()
        })
        .await
    }

    async fn orders(&self, filter: &OrderFilter) -> StoreResult<Vec<OrderView>> {
        let filter = filter.clone();
        self.with(move |c| query_orders(c, &filter)).await
    }

    async fn payment_events(&self, since: u64) -> StoreResult<Vec<(String, u64)>> {
        self.with(move |c| {
            let mut stmt =
                c.prepare("SELECT event_id, received_at FROM payments WHERE received_at >= ?1")?;
            let rows = stmt.query_map(params![since as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            rows.collect()
        })
        .await
    }

    async fn next_id(&self) -> StoreResult<u64> {
        self.with(|c| {
            c.query_row(
                "SELECT max(m) FROM (
                     SELECT coalesce(max(id), 0) AS m FROM products
                     UNION ALL SELECT coalesce(max(id), 0) FROM sales
                     UNION ALL SELECT coalesce(max(id), 0) FROM coupons
                     UNION ALL SELECT coalesce(max(id), 0) FROM orders)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|m| m as u64 + 1)
        })
        .await
    }
}

fn shop(
    c: &Connection,
    room: &str,
    keys_since: u64,
    max_keys: usize,
) -> rusqlite::Result<ShopRecord> {
    let mut s = ShopRecord::default();
    let mut stmt = c.prepare("SELECT body FROM products WHERE room = ?1 ORDER BY id")?;
    for body in stmt.query_map([room], |r| r.get::<_, String>(0))? {
        s.products.push(body?);
    }
    s.pin = c
        .query_row("SELECT product_id FROM pins WHERE room = ?1", [room], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .optional()?
        .flatten()
        .map(|p| ProductId(p as u64));
    let mut stmt = c.prepare(
        "SELECT id, room, product_id, sku, label, image, currency, regular_minor, sale_minor,
                stock, per_user_limit, starts_at, ends_at, ended_early_at, payment_window_ms,
                created_at FROM sales WHERE room = ?1 ORDER BY id",
    )?;
    let sales: Vec<(SaleTerms, Option<u64>)> = stmt
        .query_map([room], |r| {
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
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (terms, ended_early_at) in sales {
        let sale = terms.id.0 as i64;
        let mut stmt = c.prepare_cached(&format!(
            "SELECT user_id, sum(qty) FROM orders WHERE sale_id = ?1 AND status IN {LIVE}
             GROUP BY user_id"
        ))?;
        let held = stmt
            .query_map([sale], |r| {
                Ok((id(r.get(0)?, UserId::new)?, r.get::<_, i64>(1)? as u32))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let orders: i64 = c
            .prepare_cached("SELECT count(*) FROM orders WHERE sale_id = ?1")?
            .query_row([sale], |r| r.get(0))?;
        s.sales.push(SaleRecord {
            terms,
            ended_early_at,
            held,
            orders: orders as u64,
        });
    }
    let mut stmt = c.prepare(
        "SELECT id, room, count, discount, scope, expires_at, created_at FROM coupons
         WHERE room = ?1 ORDER BY id",
    )?;
    let coupons: Vec<CouponTerms> = stmt
        .query_map([room], |r| {
            Ok(CouponTerms {
                id: CouponId(r.get::<_, i64>(0)? as u64),
                room: id(r.get(1)?, RoomId::new)?,
                count: r.get(2)?,
                discount: json::<Discount>(r.get(3)?)?,
                scope: json::<CouponScope>(r.get(4)?)?,
                expires_at: r.get::<_, i64>(5)? as u64,
                created_at: r.get::<_, i64>(6)? as u64,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    for terms in coupons {
        // A claim is in use when a live order of its claimer carries it.
        let mut stmt = c.prepare_cached(&format!(
            "SELECT k.user_id, EXISTS (SELECT 1 FROM orders o WHERE o.coupon_id = k.coupon_id
                 AND o.user_id = k.user_id AND o.status IN {LIVE})
             FROM coupon_claims k WHERE k.coupon_id = ?1"
        ))?;
        let claims = stmt
            .query_map([terms.id.0 as i64], |r| {
                Ok((id(r.get(0)?, UserId::new)?, r.get::<_, bool>(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        s.coupons.push(CouponRecord { terms, claims });
    }
    // One more than asked: tells whether every key fitted.
    let mut stmt = c.prepare(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE room = ?1 AND created_at >= ?2
         ORDER BY created_at DESC, id DESC LIMIT ?3"
    ))?;
    s.keys = stmt
        .query_map(
            params![room, keys_since as i64, max_keys as i64 + 1],
            order_row,
        )?
        .collect::<rusqlite::Result<_>>()?;
    let older: bool = c.query_row(
        "SELECT EXISTS (SELECT 1 FROM orders WHERE room = ?1 AND created_at < ?2)",
        params![room, keys_since as i64],
        |r| r.get(0),
    )?;
    s.keys_complete = !older && s.keys.len() <= max_keys;
    s.keys.truncate(max_keys);
    Ok(s)
}

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
