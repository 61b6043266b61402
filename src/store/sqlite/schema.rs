//! The tables of the embedded store. Created if missing at every start;
//! the indexes serve the reads of `read.rs` (a room's shop, an order by id
//! or by idempotency key, the reserved orders) so that start-up and lookups
//! do not grow with the history.

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rooms (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    allow_guests INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    closed_at INTEGER
);
CREATE TABLE IF NOT EXISTS bans (
    room TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (room, user_id)
);
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
CREATE INDEX IF NOT EXISTS orders_by_key ON orders (room, user_id, idem_key);
CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status, deadline);
CREATE INDEX IF NOT EXISTS orders_by_room_time ON orders (room, created_at);
CREATE INDEX IF NOT EXISTS orders_by_coupon ON orders (coupon_id) WHERE coupon_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS products_by_room ON products (room, id);
CREATE INDEX IF NOT EXISTS sales_by_room ON sales (room, id);
CREATE INDEX IF NOT EXISTS coupons_by_room ON coupons (room, id);
CREATE TABLE IF NOT EXISTS room_terms (room TEXT PRIMARY KEY, term INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS payments (
    event_id TEXT PRIMARY KEY,
    order_id INTEGER NOT NULL,
    received_at INTEGER NOT NULL
);
";
