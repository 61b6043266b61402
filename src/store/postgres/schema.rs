//! The tables of the PostgreSQL store: the SQLite schema in PostgreSQL
//! types, plus `sales.sold`, the oversell guard. Ids are `TEXT COLLATE "C"`
//! so that they sort byte-wise as in SQLite (the reads return the same
//! order); numbers are BIGINT (money in minor units, times in unix ms).
//! JSON bodies are TEXT, not JSONB: they are given back byte for byte (JSONB
//! would reorder keys and drop whitespace) and nothing queries inside them.

use super::{pg_error, Conn};
use crate::store::StoreResult;

/// Serializes concurrent creators (two nodes starting at once): `CREATE
/// TABLE IF NOT EXISTS` alone can still race on the catalog.
const SCHEMA_LOCK: i64 = 0x666c_6173_6863_6173; // "flashcas"

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rooms (
    id TEXT COLLATE "C" PRIMARY KEY,
    title TEXT NOT NULL,
    allow_guests BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    closed_at BIGINT
);
CREATE TABLE IF NOT EXISTS bans (
    room TEXT COLLATE "C" NOT NULL,
    user_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (room, user_id)
);
CREATE TABLE IF NOT EXISTS products (
    id BIGINT PRIMARY KEY,
    room TEXT COLLATE "C" NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pins (
    room TEXT COLLATE "C" PRIMARY KEY,
    product_id BIGINT
);
CREATE TABLE IF NOT EXISTS sales (
    id BIGINT PRIMARY KEY,
    room TEXT COLLATE "C" NOT NULL,
    product_id BIGINT NOT NULL,
    sku TEXT COLLATE "C" NOT NULL,
    label TEXT NOT NULL,
    image TEXT,
    currency TEXT NOT NULL,
    regular_minor BIGINT NOT NULL,
    sale_minor BIGINT NOT NULL,
    stock BIGINT NOT NULL CHECK (stock > 0),
    -- Units held by live (reserved or paid) orders; kept by the order
    -- writes, never above stock.
    sold BIGINT NOT NULL DEFAULT 0 CHECK (sold >= 0 AND sold <= stock),
    per_user_limit BIGINT NOT NULL CHECK (per_user_limit > 0),
    starts_at BIGINT NOT NULL,
    ends_at BIGINT NOT NULL,
    ended_early_at BIGINT,
    payment_window_ms BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS coupons (
    id BIGINT PRIMARY KEY,
    room TEXT COLLATE "C" NOT NULL,
    count BIGINT NOT NULL CHECK (count > 0),
    discount TEXT NOT NULL,
    scope TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS coupon_claims (
    coupon_id BIGINT NOT NULL,
    user_id TEXT COLLATE "C" NOT NULL,
    claimed_at BIGINT NOT NULL,
    PRIMARY KEY (coupon_id, user_id)
);
CREATE TABLE IF NOT EXISTS orders (
    id BIGINT PRIMARY KEY,
    room TEXT COLLATE "C" NOT NULL,
    sale_id BIGINT NOT NULL,
    product_id BIGINT NOT NULL,
    sku TEXT COLLATE "C" NOT NULL,
    label TEXT NOT NULL,
    user_id TEXT COLLATE "C" NOT NULL,
    user_name TEXT NOT NULL,
    idem_key TEXT COLLATE "C" NOT NULL,
    qty BIGINT NOT NULL CHECK (qty > 0),
    currency TEXT NOT NULL,
    unit_minor BIGINT NOT NULL,
    discount_minor BIGINT NOT NULL,
    total_minor BIGINT NOT NULL,
    coupon_id BIGINT,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    deadline BIGINT NOT NULL,
    paid_at BIGINT,
    closed_at BIGINT,
    UNIQUE (sale_id, user_id, idem_key)
);
CREATE INDEX IF NOT EXISTS orders_by_room ON orders (room, id);
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, id);
CREATE INDEX IF NOT EXISTS orders_by_sale ON orders (sale_id, id);
CREATE INDEX IF NOT EXISTS orders_by_key ON orders (room, user_id, idem_key);
CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status, deadline);
CREATE INDEX IF NOT EXISTS orders_by_room_time ON orders (room, created_at);
CREATE INDEX IF NOT EXISTS orders_by_coupon ON orders (coupon_id) WHERE coupon_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS products_by_room ON products (room, id);
CREATE INDEX IF NOT EXISTS sales_by_room ON sales (room, id);
CREATE INDEX IF NOT EXISTS coupons_by_room ON coupons (room, id);
CREATE TABLE IF NOT EXISTS room_terms (room TEXT COLLATE "C" PRIMARY KEY, term BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS payments (
    event_id TEXT COLLATE "C" PRIMARY KEY,
    order_id BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);
"#;

/// Creates what is missing, in one transaction under the advisory lock.
pub(super) async fn create(conn: &mut Conn) -> StoreResult<()> {
    conn.batch(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA} COMMIT;"
    ))
    .await
    .map_err(pg_error)
}
