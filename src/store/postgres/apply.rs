//! One [`Write`] as SQL, inside the batch's transaction. Besides what the
//! SQLite store does, the order writes keep `sales.sold` (units held by live
//! orders): a new live order takes its units only if they fit in the stock,
//! so the database itself refuses an oversell, whatever the caller checked.

use super::Conn;
use crate::store::{StoreError, StoreResult, Write};
use flashcast_wire::commerce::OrderStatus;

/// The order columns, in the order `read::order_row` reads them.
macro_rules! order_columns {
    () => {
        "id, room, sale_id, product_id, sku, label, user_id, user_name, idem_key, qty, \
         currency, unit_minor, discount_minor, total_minor, coupon_id, status, created_at, \
         deadline, paid_at, closed_at"
    };
}
pub(super) use order_columns;

type PgResult<T> = Result<T, tokio_postgres::Error>;

/// Applies one write under its own SAVEPOINT: on failure it is rolled back
/// alone and the rest of the batch still commits. The outer `Err` is the
/// session failing (the batch is lost), the inner one this write failing.
pub(super) async fn in_savepoint(conn: &mut Conn, write: &Write) -> PgResult<StoreResult<()>> {
    conn.batch("SAVEPOINT w").await?;
    match apply(conn, write).await {
        Ok(()) => {
            conn.batch("RELEASE SAVEPOINT w").await?;
            Ok(Ok(()))
        }
        Err(e) => {
            // Fails too when the session is gone: then the batch is lost.
            conn.batch("ROLLBACK TO SAVEPOINT w; RELEASE SAVEPOINT w")
                .await?;
            Ok(Err(match e {
                Failed::Store(e) => e,
                Failed::Pg(e) => super::pg_error(e),
            }))
        }
    }
}

/// Why one write failed: refused (conflict, constraint) or the session.
enum Failed {
    Store(StoreError),
    Pg(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Self {
        Failed::Pg(e)
    }
}

/// A conditional write changed nothing: the state it expected was not there.
fn one_row(changed: u64, what: &str) -> Result<(), Failed> {
    if changed == 1 {
        Ok(())
    } else {
        Err(Failed::Store(StoreError::Conflict(format!(
            "{what}: expected state not found"
        ))))
    }
}

fn to_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("commerce values serialize")
}

fn ms(t: u64) -> i64 {
    t as i64
}

async fn apply(c: &mut Conn, write: &Write) -> Result<(), Failed> {
    match write {
        Write::PutRoom(room) => {
            c.execute(
                "INSERT INTO rooms (id, title, allow_guests, created_at, closed_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET title = excluded.title,
                     allow_guests = excluded.allow_guests, closed_at = excluded.closed_at",
                &[
                    &room.id.as_str(),
                    &room.title,
                    &room.allow_guests,
                    &ms(room.created_at),
                    &room.closed_at.map(ms),
                ],
            )
            .await?;
        }
        Write::CloseRoom { room, at } => {
            c.execute(
                "UPDATE rooms SET closed_at = $2 WHERE id = $1 AND closed_at IS NULL",
                &[&room.as_str(), &ms(*at)],
            )
            .await?;
        }
        Write::Ban { room, user } => {
            c.execute(
                "INSERT INTO bans (room, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&room.as_str(), &user.as_str()],
            )
            .await?;
        }
        Write::Unban { room, user } => {
            c.execute(
                "DELETE FROM bans WHERE room = $1 AND user_id = $2",
                &[&room.as_str(), &user.as_str()],
            )
            .await?;
        }
        Write::InitMeta { key, value } => {
            c.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[key, value],
            )
            .await?;
        }
        Write::PutProduct { id, room, body } => {
            c.execute(
                "INSERT INTO products (id, room, body) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                &[&(id.0 as i64), &room.as_str(), body],
            )
            .await?;
        }
        Write::SetPin { room, product } => {
            c.execute(
                "INSERT INTO pins (room, product_id) VALUES ($1, $2)
                 ON CONFLICT (room) DO UPDATE SET product_id = excluded.product_id",
                &[&room.as_str(), &product.map(|p| p.0 as i64)],
            )
            .await?;
        }
        Write::PutSale(t) => {
            c.execute(
                "INSERT INTO sales (id, room, product_id, sku, label, image, currency,
                     regular_minor, sale_minor, stock, per_user_limit, starts_at, ends_at,
                     payment_window_ms, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                &[
                    &(t.id.0 as i64),
                    &t.room.as_str(),
                    &(t.product_id.0 as i64),
                    &t.sku.as_str(),
                    &t.label,
                    &t.image,
                    &t.sale_price.currency.as_str(),
                    &(t.regular_price.minor as i64),
                    &(t.sale_price.minor as i64),
                    &i64::from(t.stock),
                    &i64::from(t.per_user_limit),
                    &ms(t.starts_at),
                    &ms(t.ends_at),
                    &ms(t.payment_window_ms),
                    &ms(t.created_at),
                ],
            )
            .await?;
        }
        Write::EndSale { sale, at } => one_row(
            c.execute(
                "UPDATE sales SET ended_early_at = $2 WHERE id = $1 AND ended_early_at IS NULL",
                &[&(sale.0 as i64), &ms(*at)],
            )
            .await?,
            "end sale",
        )?,
        Write::PutCoupon(t) => {
            c.execute(
                "INSERT INTO coupons (id, room, count, discount, scope, expires_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &(t.id.0 as i64),
                    &t.room.as_str(),
                    &i64::from(t.count),
                    &to_json(&t.discount),
                    &to_json(&t.scope),
                    &ms(t.expires_at),
                    &ms(t.created_at),
                ],
            )
            .await?;
        }
        Write::ClaimCoupon { coupon, user, at } => {
            c.execute(
                "INSERT INTO coupon_claims (coupon_id, user_id, claimed_at) VALUES ($1, $2, $3)",
                &[&(coupon.0 as i64), &user.as_str(), &ms(*at)],
            )
            .await?;
        }
        Write::PutOrder(o) => {
            c.execute(
                concat!(
                    "INSERT INTO orders (",
                    order_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
                     $15, $16, $17, $18, $19, $20)"
                ),
                &[
                    &(o.id.0 as i64),
                    &o.room.as_str(),
                    &(o.sale_id.0 as i64),
                    &(o.product_id.0 as i64),
                    &o.sku.as_str(),
                    &o.label,
                    &o.user_id.as_str(),
                    &o.user_name,
                    &o.key.as_str(),
                    &i64::from(o.qty),
                    &o.total.currency.as_str(),
                    &(o.unit_price.minor as i64),
                    &(o.discount_minor as i64),
                    &(o.total.minor as i64),
                    &o.coupon_id.map(|c| c.0 as i64),
                    &o.status.as_str(),
                    &ms(o.created_at),
                    &ms(o.deadline),
                    &o.paid_at.map(ms),
                    &o.closed_at.map(ms),
                ],
            )
            .await?;
            if matches!(o.status, OrderStatus::Reserved | OrderStatus::Paid) {
                // The oversell guard: no matching row is a sale that is
                // missing or whose stock these units do not fit in.
                one_row(
                    c.execute(
                        "UPDATE sales SET sold = sold + $2 WHERE id = $1 AND sold + $2 <= stock",
                        &[&(o.sale_id.0 as i64), &i64::from(o.qty)],
                    )
                    .await?,
                    "put order: units beyond the sale's stock",
                )?;
            }
        }
        Write::PayOrder {
            order,
            event_id,
            at,
        } => {
            c.execute(
                "INSERT INTO payments (event_id, order_id, received_at) VALUES ($1, $2, $3)",
                &[event_id, &(order.0 as i64), &ms(*at)],
            )
            .await?;
            one_row(
                c.execute(
                    "UPDATE orders SET status = 'paid', paid_at = $2
                     WHERE id = $1 AND status = 'reserved'",
                    &[&(order.0 as i64), &ms(*at)],
                )
                .await?,
                "pay order",
            )?;
        }
        Write::CloseOrder { order, to, at } => {
            let sql = match to {
                OrderStatus::Expired => {
                    "UPDATE orders SET status = $2, closed_at = $3
                     WHERE id = $1 AND status = 'reserved' RETURNING sale_id, qty"
                }
                OrderStatus::Cancelled => {
                    "UPDATE orders SET status = $2, closed_at = $3
                     WHERE id = $1 AND status IN ('reserved', 'paid') RETURNING sale_id, qty"
                }
                OrderStatus::Reserved | OrderStatus::Paid => {
                    return Err(Failed::Store(StoreError::Backend(
                        "closing moves an order to expired or cancelled".into(),
                    )))
                }
            };
            let closed = c
                .query(sql, &[&(order.0 as i64), &to.as_str(), &ms(*at)])
                .await?;
            one_row(closed.len() as u64, "close order")?;
            let (sale, qty): (i64, i64) = (closed[0].try_get(0)?, closed[0].try_get(1)?);
            // The units go back (a live order always took them).
            c.execute(
                "UPDATE sales SET sold = sold - $2 WHERE id = $1",
                &[&sale, &qty],
            )
            .await?;
        }
        Write::ClaimRoom { room, term } => {
            let changed = c
                .execute(
                    "INSERT INTO room_terms (room, term) VALUES ($1, $2)
                     ON CONFLICT (room) DO UPDATE SET term = EXCLUDED.term
                     WHERE room_terms.term < EXCLUDED.term",
                    &[&room.as_str(), &(*term as i64)],
                )
                .await?;
            one_row(changed, &format!("claim of room {room} at term {term}"))?;
        }
        Write::Fenced { room, term, write } => {
            assert!(!matches!(**write, Write::Fenced { .. }), "fenced once");
            // FOR SHARE: a new owner's claim waits for this transaction, so
            // what it commits is in place before the new owner reads.
            let recorded: Option<i64> = c
                .query_opt(
                    "SELECT term FROM room_terms WHERE room = $1 FOR SHARE",
                    &[&room.as_str()],
                )
                .await?
                .map(|r| r.get(0));
            if recorded != Some(*term as i64) {
                return Err(Failed::Store(StoreError::fenced(room, *term, recorded)));
            }
            Box::pin(apply(c, write)).await?;
        }
        Write::ExpireOverdue { now } => {
            c.execute(
                "WITH closed AS (
                     UPDATE orders SET status = 'expired', closed_at = $1
                     WHERE status = 'reserved' AND deadline < $1 RETURNING sale_id, qty),
                 given_back AS (SELECT sale_id, sum(qty)::BIGINT AS qty FROM closed GROUP BY sale_id)
                 UPDATE sales s SET sold = s.sold - g.qty FROM given_back g
                 WHERE s.id = g.sale_id",
                &[&ms(*now)],
            )
            .await?;
        }
    }
    Ok(())
}
