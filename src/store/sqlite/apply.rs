//! One [`Write`] as SQL, inside the batch's transaction.

use rusqlite::{params, Transaction};

use super::backend;
use crate::store::{StoreError, StoreResult, Write};
use flashcast_wire::commerce::OrderStatus;

/// The order columns, in the order `read::order_row` reads them.
pub(super) const ORDER_COLUMNS: &str = "id, room, sale_id, product_id, sku, label, user_id, \
    user_name, idem_key, qty, currency, unit_minor, discount_minor, total_minor, coupon_id, \
    status, created_at, deadline, paid_at, closed_at";

/// Applies one write under its own SAVEPOINT: on failure it is rolled back
/// alone and the rest of the batch still commits.
pub(super) fn in_savepoint(tx: &Transaction<'_>, write: &Write) -> StoreResult<()> {
    tx.prepare_cached("SAVEPOINT w")
        .and_then(|mut s| s.execute([]))
        .map_err(backend)?;
    match apply(tx, write) {
        Ok(()) => tx
            .prepare_cached("RELEASE w")
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(backend),
        Err(e) => {
            tx.execute_batch("ROLLBACK TO w; RELEASE w")
                .map_err(backend)?;
            Err(e)
        }
    }
}

/// A conditional write changed nothing: the state it expected was not there.
fn one_row(changed: usize, what: &str) -> StoreResult<()> {
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "{what}: expected state not found"
        )))
    }
}

fn to_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("commerce values serialize")
}

fn apply(tx: &Transaction<'_>, write: &Write) -> StoreResult<()> {
    let run = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> StoreResult<usize> {
        tx.prepare_cached(sql)
            .and_then(|mut s| s.execute(p))
            .map_err(backend)
    };
    match write {
        Write::PutRoom(room) => run(
            "INSERT INTO rooms (id, title, allow_guests, created_at, closed_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(id) DO UPDATE SET title = excluded.title,
                 allow_guests = excluded.allow_guests, closed_at = excluded.closed_at",
            params![
                room.id.as_str(),
                room.title,
                room.allow_guests,
                room.created_at as i64,
                room.closed_at.map(|t| t as i64)
            ],
        )
        .map(drop),
        Write::CloseRoom { room, at } => run(
            "UPDATE rooms SET closed_at = ?2 WHERE id = ?1 AND closed_at IS NULL",
            params![room.as_str(), *at as i64],
        )
        .map(drop),
        Write::Ban { room, user } => run(
            "INSERT OR IGNORE INTO bans (room, user_id) VALUES (?1, ?2)",
            params![room.as_str(), user.as_str()],
        )
        .map(drop),
        Write::Unban { room, user } => run(
            "DELETE FROM bans WHERE room = ?1 AND user_id = ?2",
            params![room.as_str(), user.as_str()],
        )
        .map(drop),
        Write::InitMeta { key, value } => run(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )
        .map(drop),
        Write::PutProduct { id, room, body } => run(
            "INSERT INTO products (id, room, body) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET body = excluded.body",
            params![id.0 as i64, room.as_str(), body],
        )
        .map(drop),
        Write::SetPin { room, product } => run(
            "INSERT INTO pins (room, product_id) VALUES (?1, ?2)
             ON CONFLICT(room) DO UPDATE SET product_id = excluded.product_id",
            params![room.as_str(), product.map(|p| p.0 as i64)],
        )
        .map(drop),
        Write::PutSale(t) => run(
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
        .map(drop),
        Write::EndSale { sale, at } => one_row(
            run(
                "UPDATE sales SET ended_early_at = ?2 WHERE id = ?1 AND ended_early_at IS NULL",
                params![sale.0 as i64, *at as i64],
            )?,
            "end sale",
        ),
        Write::PutCoupon(t) => run(
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
        .map(drop),
        Write::ClaimCoupon { coupon, user, at } => run(
            "INSERT INTO coupon_claims (coupon_id, user_id, claimed_at) VALUES (?1, ?2, ?3)",
            params![coupon.0 as i64, user.as_str(), *at as i64],
        )
        .map(drop),
        // No database-level oversell guard here, unlike PostgreSQL's
        // `sales.sold`: it would need a migration of existing files, and
        // summing a sale's live orders per insert is too slow for a flash
        // sale; the in-memory stock counter is the guard.
        Write::PutOrder(o) => run(
            &format!(
                "INSERT INTO orders ({ORDER_COLUMNS}) VALUES
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
            ),
            params![
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
            ],
        )
        .map(drop),
        Write::PayOrder {
            order,
            event_id,
            at,
        } => {
            run(
                "INSERT INTO payments (event_id, order_id, received_at) VALUES (?1, ?2, ?3)",
                params![event_id, order.0 as i64, *at as i64],
            )?;
            one_row(
                run(
                    "UPDATE orders SET status = 'paid', paid_at = ?2
                     WHERE id = ?1 AND status = 'reserved'",
                    params![order.0 as i64, *at as i64],
                )?,
                "pay order",
            )
        }
        Write::CloseOrder { order, to, at } => {
            let sql = match to {
                OrderStatus::Expired => {
                    "UPDATE orders SET status = ?2, closed_at = ?3
                     WHERE id = ?1 AND status = 'reserved'"
                }
                OrderStatus::Cancelled => {
                    "UPDATE orders SET status = ?2, closed_at = ?3
                     WHERE id = ?1 AND status IN ('reserved', 'paid')"
                }
                OrderStatus::Reserved | OrderStatus::Paid => {
                    return Err(StoreError::Backend(
                        "closing moves an order to expired or cancelled".into(),
                    ))
                }
            };
            one_row(
                run(sql, params![order.0 as i64, to.as_str(), *at as i64])?,
                "close order",
            )
        }
        Write::ExpireOverdue { now } => run(
            "UPDATE orders SET status = 'expired', closed_at = ?1
             WHERE status = 'reserved' AND deadline < ?1",
            params![*now as i64],
        )
        .map(drop),
        Write::ClaimRoom { room, term } => {
            let changed = run(
                "INSERT INTO room_terms (room, term) VALUES (?1, ?2)
                 ON CONFLICT(room) DO UPDATE SET term = excluded.term
                 WHERE excluded.term > room_terms.term",
                params![room.as_str(), *term as i64],
            )?;
            one_row(changed, &format!("claim of room {room} at term {term}"))
        }
        Write::Fenced { room, term, write } => {
            assert!(!matches!(**write, Write::Fenced { .. }), "fenced once");
            let recorded: Option<i64> = tx
                .prepare_cached("SELECT term FROM room_terms WHERE room = ?1")
                .and_then(|mut s| {
                    s.query_row([room.as_str()], |r| r.get(0))
                        .map(Some)
                        .or_else(|e| match e {
                            rusqlite::Error::QueryReturnedNoRows => Ok(None),
                            e => Err(e),
                        })
                })
                .map_err(backend)?;
            if recorded != Some(*term as i64) {
                return Err(StoreError::fenced(room, *term, recorded));
            }
            apply(tx, write)
        }
    }
}
