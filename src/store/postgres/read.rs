//! The queries behind [`ReadBackend`], through a small pool of connections
//! (one read holds one connection; a room's shop is read in one
//! REPEATABLE READ snapshot). The results are those of the SQLite reader,
//! row for row and in the same order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio_postgres::types::FromSql;
use tokio_postgres::{Config, Row};

use super::apply::order_columns;
use super::{pg_error, timed_out, Conn, PgIo, LOST, READ_POOL, READ_TIMEOUT};
use crate::store::{
    CouponRecord, CouponTerms, OrderFilter, ReadBackend, RoomRecord, SaleRecord, SaleTerms,
    ShopRecord, StoreError, StoreResult,
};
use flashcast_wire::commerce::{CouponScope, Discount};
use flashcast_wire::commerce::{OrderStatus, OrderView};
use flashcast_wire::ids::{CouponId, IdemKey, OrderId, ProductId, RoomId, SaleId, Sku, UserId};
use flashcast_wire::money::{Currency, Money};

/// The reading connections, opened on first use and again after one was
/// lost or failed.
pub struct PostgresReader {
    io: Arc<PgIo>,
    config: Config,
    slots: Vec<Mutex<Option<Conn>>>,
    next: AtomicUsize,
}

/// Runs `$body` on a leased connection, within `READ_TIMEOUT`. A session
/// found lost is replaced and the read tried once more (reads change
/// nothing, so a retry is safe); any other failure drops the session too,
/// whatever state it was left in goes with it.
macro_rules! read {
    ($self:ident, $c:ident => $body:expr) => {{
        let mut retried = false;
        loop {
            let mut slot = $self.lease().await?;
            let outcome = match slot.as_mut() {
                Some($c) => tokio::time::timeout(READ_TIMEOUT, async { $body }).await,
                None => break Err(StoreError::Backend("postgres: no session".into())),
            };
            match outcome {
                Ok(Ok(v)) => break Ok(v),
                Ok(Err(e)) => {
                    let lost = slot.as_ref().is_some_and(|c| c.client.is_closed())
                        || matches!(&e, StoreError::Backend(m) if m.starts_with(LOST));
                    *slot = None;
                    if lost && !retried {
                        retried = true;
                        continue;
                    }
                    break Err(e);
                }
                Err(_) => {
                    *slot = None;
                    break Err(timed_out("a read", READ_TIMEOUT));
                }
            }
        }
    }};
}

impl PostgresReader {
    pub(super) fn new(io: Arc<PgIo>, config: Config) -> PostgresReader {
        PostgresReader {
            io,
            config,
            slots: (0..READ_POOL).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A connection of the pool, to this read alone.
    async fn lease(&self) -> StoreResult<tokio::sync::MutexGuard<'_, Option<Conn>>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = tokio::time::timeout(READ_TIMEOUT, self.slots[i].lock())
            .await
            .map_err(|_| timed_out("waiting for a read connection", READ_TIMEOUT))?;
        if slot.as_ref().is_none_or(|c| c.client.is_closed()) {
            *slot = None;
            *slot = Some(self.io.connect(&self.config).await?);
        }
        Ok(slot)
    }
}

fn col<'a, T: FromSql<'a>>(r: &'a Row, i: usize) -> StoreResult<T> {
    r.try_get(i).map_err(pg_error)
}

fn int(r: &Row, i: usize) -> StoreResult<u64> {
    Ok(col::<i64>(r, i)? as u64)
}

fn opt_int(r: &Row, i: usize) -> StoreResult<Option<u64>> {
    Ok(col::<Option<i64>>(r, i)?.map(|v| v as u64))
}

fn small(r: &Row, i: usize) -> StoreResult<u32> {
    let v = col::<i64>(r, i)?;
    u32::try_from(v).map_err(|_| StoreError::Backend(format!("postgres: {v} is out of range")))
}

fn id<T>(
    r: &Row,
    i: usize,
    parse: fn(&str) -> Result<T, flashcast_wire::ids::InvalidId>,
) -> StoreResult<T> {
    let s: &str = col(r, i)?;
    parse(s).map_err(|e| StoreError::Backend(format!("postgres: stored id {s:?}: {e}")))
}

fn json<T: serde::de::DeserializeOwned>(r: &Row, i: usize) -> StoreResult<T> {
    serde_json::from_str(col(r, i)?).map_err(|e| StoreError::Backend(e.to_string()))
}

fn currency(r: &Row, i: usize) -> StoreResult<Currency> {
    Currency::new(col(r, i)?).map_err(|e| StoreError::Backend(e.to_string()))
}

const LIVE: &str = "('reserved', 'paid')";

#[async_trait]
impl ReadBackend for PostgresReader {
    async fn rooms(&self) -> StoreResult<Vec<RoomRecord>> {
        read!(self, c => {
            let rows = c
                .query(
                    "SELECT id, title, allow_guests, created_at, closed_at FROM rooms
                     ORDER BY created_at, id",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|r| {
                    Ok(RoomRecord {
                        id: id(r, 0, RoomId::new)?,
                        title: col(r, 1)?,
                        allow_guests: col(r, 2)?,
                        created_at: int(r, 3)?,
                        closed_at: opt_int(r, 4)?,
                    })
                })
                .collect()
        })
    }

    async fn bans(&self, room: &RoomId) -> StoreResult<Vec<UserId>> {
        read!(self, c => {
            c.query(
                "SELECT user_id FROM bans WHERE room = $1 ORDER BY user_id",
                &[&room.as_str()],
            )
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| id(r, 0, UserId::new))
            .collect()
        })
    }

    async fn meta(&self, key: &str) -> StoreResult<Option<String>> {
        read!(self, c => {
            c.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
                .await
                .map_err(pg_error)?
                .map(|r| col(&r, 0))
                .transpose()
        })
    }

    async fn shop(
        &self,
        room: &RoomId,
        keys_since: u64,
        max_keys: usize,
    ) -> StoreResult<ShopRecord> {
        read!(self, c => {
            // One snapshot: the sales, their orders and the keys agree.
            c.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(pg_error)?;
            let shop = shop(c, room.as_str(), keys_since, max_keys).await?;
            c.batch("COMMIT").await.map_err(pg_error)?;
            Ok(shop)
        })
    }

    async fn reserved_orders(&self) -> StoreResult<Vec<OrderView>> {
        read!(self, c => {
            c.query(
                concat!(
                    "SELECT ",
                    order_columns!(),
                    " FROM orders WHERE status = 'reserved' ORDER BY id"
                ),
                &[],
            )
            .await
            .map_err(pg_error)?
            .iter()
            .map(order_row)
            .collect()
        })
    }

    async fn order(&self, order: OrderId) -> StoreResult<Option<OrderView>> {
        read!(self, c => {
            c.query_opt(
                concat!("SELECT ", order_columns!(), " FROM orders WHERE id = $1"),
                &[&(order.0 as i64)],
            )
            .await
            .map_err(pg_error)?
            .map(|r| order_row(&r))
            .transpose()
        })
    }

    async fn order_by_key(
        &self,
        room: &RoomId,
        user: &UserId,
        key: &IdemKey,
    ) -> StoreResult<Option<OrderView>> {
        read!(self, c => {
            c.query_opt(
                concat!(
                    "SELECT ",
                    order_columns!(),
                    " FROM orders WHERE room = $1 AND user_id = $2 AND idem_key = $3
                     ORDER BY id LIMIT 1"
                ),
                &[&room.as_str(), &user.as_str(), &key.as_str()],
            )
            .await
            .map_err(pg_error)?
            .map(|r| order_row(&r))
            .transpose()
        })
    }

    async fn orders(&self, filter: &OrderFilter) -> StoreResult<Vec<OrderView>> {
        read!(self, c => query_orders(c, filter).await)
    }

    async fn payment_events(&self, since: u64) -> StoreResult<Vec<(String, u64)>> {
        read!(self, c => {
            c.query(
                "SELECT event_id, received_at FROM payments WHERE received_at >= $1",
                &[&(since as i64)],
            )
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| Ok((col(r, 0)?, int(r, 1)?)))
            .collect()
        })
    }

    async fn next_id(&self) -> StoreResult<u64> {
        read!(self, c => {
            let r = c
                .query_opt(
                    "SELECT greatest(
                         (SELECT coalesce(max(id), 0) FROM products),
                         (SELECT coalesce(max(id), 0) FROM sales),
                         (SELECT coalesce(max(id), 0) FROM coupons),
                         (SELECT coalesce(max(id), 0) FROM orders))",
                    &[],
                )
                .await
                .map_err(pg_error)?
                .ok_or_else(|| StoreError::Backend("postgres: next id: no row".into()))?;
            Ok(int(&r, 0)? + 1)
        })
    }
}

async fn shop(
    c: &mut Conn,
    room: &str,
    keys_since: u64,
    max_keys: usize,
) -> StoreResult<ShopRecord> {
    let mut s = ShopRecord::default();
    for r in c
        .query(
            "SELECT body FROM products WHERE room = $1 ORDER BY id",
            &[&room],
        )
        .await
        .map_err(pg_error)?
    {
        s.products.push(col(&r, 0)?);
    }
    s.pin = match c
        .query_opt("SELECT product_id FROM pins WHERE room = $1", &[&room])
        .await
        .map_err(pg_error)?
    {
        Some(r) => opt_int(&r, 0)?.map(ProductId),
        None => None,
    };
    let rows = c
        .query(
            "SELECT id, room, product_id, sku, label, image, currency, regular_minor, sale_minor,
                    stock, per_user_limit, starts_at, ends_at, ended_early_at, payment_window_ms,
                    created_at FROM sales WHERE room = $1 ORDER BY id",
            &[&room],
        )
        .await
        .map_err(pg_error)?;
    for r in &rows {
        let cur = currency(r, 6)?;
        let terms = SaleTerms {
            id: SaleId(int(r, 0)?),
            room: id(r, 1, RoomId::new)?,
            product_id: ProductId(int(r, 2)?),
            sku: id(r, 3, Sku::new)?,
            label: col(r, 4)?,
            image: col(r, 5)?,
            regular_price: Money::new(int(r, 7)?, cur),
            sale_price: Money::new(int(r, 8)?, cur),
            stock: small(r, 9)?,
            per_user_limit: small(r, 10)?,
            starts_at: int(r, 11)?,
            ends_at: int(r, 12)?,
            payment_window_ms: int(r, 14)?,
            created_at: int(r, 15)?,
        };
        let ended_early_at = opt_int(r, 13)?;
        let sale = terms.id.0 as i64;
        // What the live orders hold, computed from them as SQLite does;
        // `sales.sold` is the write-side guard and equals the sum of this.
        let held = c
            .query(
                &format!(
                    "SELECT user_id, sum(qty)::BIGINT FROM orders
                     WHERE sale_id = $1 AND status IN {LIVE} GROUP BY user_id ORDER BY user_id"
                ),
                &[&sale],
            )
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| Ok((id(r, 0, UserId::new)?, small(r, 1)?)))
            .collect::<StoreResult<_>>()?;
        let orders = c
            .query_opt("SELECT count(*) FROM orders WHERE sale_id = $1", &[&sale])
            .await
            .map_err(pg_error)?
            .map(|r| int(&r, 0))
            .transpose()?
            .unwrap_or(0);
        s.sales.push(SaleRecord {
            terms,
            ended_early_at,
            held,
            orders,
        });
    }
    let rows = c
        .query(
            "SELECT id, room, count, discount, scope, expires_at, created_at FROM coupons
             WHERE room = $1 ORDER BY id",
            &[&room],
        )
        .await
        .map_err(pg_error)?;
    for r in &rows {
        let terms = CouponTerms {
            id: CouponId(int(r, 0)?),
            room: id(r, 1, RoomId::new)?,
            count: small(r, 2)?,
            discount: json::<Discount>(r, 3)?,
            scope: json::<CouponScope>(r, 4)?,
            expires_at: int(r, 5)?,
            created_at: int(r, 6)?,
        };
        // A claim is in use when a live order of its claimer carries it.
        let claims = c
            .query(
                &format!(
                    "SELECT k.user_id, EXISTS (SELECT 1 FROM orders o
                         WHERE o.coupon_id = k.coupon_id AND o.user_id = k.user_id
                         AND o.status IN {LIVE})
                     FROM coupon_claims k WHERE k.coupon_id = $1 ORDER BY k.user_id"
                ),
                &[&(terms.id.0 as i64)],
            )
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| Ok((id(r, 0, UserId::new)?, col(r, 1)?)))
            .collect::<StoreResult<_>>()?;
        s.coupons.push(CouponRecord { terms, claims });
    }
    // One more than asked: tells whether every key fitted.
    s.keys = c
        .query(
            concat!(
                "SELECT ",
                order_columns!(),
                " FROM orders WHERE room = $1 AND created_at >= $2
                 ORDER BY created_at DESC, id DESC LIMIT $3"
            ),
            &[&room, &(keys_since as i64), &(max_keys as i64 + 1)],
        )
        .await
        .map_err(pg_error)?
        .iter()
        .map(order_row)
        .collect::<StoreResult<_>>()?;
    let older: bool = match c
        .query_opt(
            "SELECT EXISTS (SELECT 1 FROM orders WHERE room = $1 AND created_at < $2)",
            &[&room, &(keys_since as i64)],
        )
        .await
        .map_err(pg_error)?
    {
        Some(r) => col(&r, 0)?,
        None => false,
    };
    s.keys_complete = !older && s.keys.len() <= max_keys;
    s.keys.truncate(max_keys);
    Ok(s)
}

fn order_row(r: &Row) -> StoreResult<OrderView> {
    let cur = currency(r, 10)?;
    let status: &str = col(r, 15)?;
    Ok(OrderView {
        id: OrderId(int(r, 0)?),
        room: id(r, 1, RoomId::new)?,
        sale_id: SaleId(int(r, 2)?),
        product_id: ProductId(int(r, 3)?),
        sku: id(r, 4, Sku::new)?,
        label: col(r, 5)?,
        user_id: id(r, 6, UserId::new)?,
        user_name: col(r, 7)?,
        key: id(r, 8, IdemKey::new)?,
        qty: small(r, 9)?,
        unit_price: Money::new(int(r, 11)?, cur),
        discount_minor: int(r, 12)?,
        total: Money::new(int(r, 13)?, cur),
        coupon_id: opt_int(r, 14)?.map(CouponId),
        status: OrderStatus::parse(status)
            .ok_or_else(|| StoreError::Backend(format!("postgres: bad order status {status}")))?,
        created_at: int(r, 16)?,
        deadline: int(r, 17)?,
        paid_at: opt_int(r, 18)?,
        closed_at: opt_int(r, 19)?,
    })
}

async fn query_orders(c: &mut Conn, f: &OrderFilter) -> StoreResult<Vec<OrderView>> {
    // At most 16 shapes of SQL (which filters are set), so the statement
    // cache stays small; the values are all parameters.
    let after = f.after.map_or(0, |o| o.0) as i64;
    let (room, user) = (
        f.room.as_ref().map(|r| r.as_str()),
        f.user.as_ref().map(|u| u.as_str()),
    );
    let sale = f.sale.map(|s| s.0 as i64);
    let status = f.status.map(|s| s.as_str());
    let limit = i64::try_from(f.limit).unwrap_or(i64::MAX);
    let mut sql = String::from(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders WHERE id > $1"
    ));
    let mut args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&after];
    if let Some(room) = &room {
        args.push(room);
        sql.push_str(&format!(" AND room = ${}", args.len()));
    }
    if let Some(user) = &user {
        args.push(user);
        sql.push_str(&format!(" AND user_id = ${}", args.len()));
    }
    if let Some(sale) = &sale {
        args.push(sale);
        sql.push_str(&format!(" AND sale_id = ${}", args.len()));
    }
    if let Some(status) = &status {
        args.push(status);
        sql.push_str(&format!(" AND status = ${}", args.len()));
    }
    args.push(&limit);
    sql.push_str(&format!(" ORDER BY id LIMIT ${}", args.len()));
    c.query(&sql, &args)
        .await
        .map_err(pg_error)?
        .iter()
        .map(order_row)
        .collect()
}
