//! The two seams a storage engine implements: a [`WriteBackend`] that the
//! single group-commit writer owns and feeds batches of [`Write`]s, and a
//! [`ReadBackend`] shared by every reader. They are separate because they
//! scale apart: one writer (one transaction per batch), many readers.
//!
//! Both are async (`async_trait`) so that a network database fits: the
//! embedded SQLite backend does its (blocking) work on the writer thread or
//! a blocking-pool thread; a PostgreSQL backend (cluster mode) awaits its
//! client instead. Neither trait names a SQL dialect.

use async_trait::async_trait;

use super::{OrderFilter, RoomRecord, ShopRecord, StoreResult, Write};
use flashcast_wire::commerce::OrderView;
use flashcast_wire::ids::{IdemKey, OrderId, RoomId, UserId};

/// Applies batches of writes. Owned by the group-commit writer, so one at a
/// time: a backend never sees two batches at once.
#[async_trait]
pub trait WriteBackend: Send + 'static {
    /// Applies `batch` in ONE transaction, each write on its own (a failing
    /// write is rolled back alone, the rest of the batch commits), and
    /// commits durably. Returns one result per write, in order, only once
    /// the commit is durable; `Err` when the transaction itself failed
    /// (then none of the batch was applied).
    async fn apply(&mut self, batch: &[Write]) -> StoreResult<Vec<StoreResult<()>>>;
}

/// Everything read back from the store: at start-up (rooms, bans, the shops
/// of open rooms, reservations) and on demand (orders no longer in memory).
/// Reads see committed state only.
#[async_trait]
pub trait ReadBackend: Send + Sync + 'static {
    /// Every room, oldest first.
    async fn rooms(&self) -> StoreResult<Vec<RoomRecord>>;
    async fn bans(&self, room: &RoomId) -> StoreResult<Vec<UserId>>;
    async fn meta(&self, key: &str) -> StoreResult<Option<String>>;
    /// A room's catalog, pin, sales (with what their live orders hold) and
    /// coupon drops (with their claims); idempotency keys of orders created
    /// at or after `keys_since`, newest first, at most `max_keys`.
    async fn shop(
        &self,
        room: &RoomId,
        keys_since: u64,
        max_keys: usize,
    ) -> StoreResult<ShopRecord>;
    /// Every reserved order (what the expiry sweep watches), any room.
    async fn reserved_orders(&self) -> StoreResult<Vec<OrderView>>;
    async fn order(&self, id: OrderId) -> StoreResult<Option<OrderView>>;
    /// The order a buyer's idempotency key created in a room, if any.
    async fn order_by_key(
        &self,
        room: &RoomId,
        user: &UserId,
        key: &IdemKey,
    ) -> StoreResult<Option<OrderView>>;
    /// Orders matching `filter`, oldest first.
    async fn orders(&self, filter: &OrderFilter) -> StoreResult<Vec<OrderView>>;
    /// Payment event ids received at or after `since`, with their time.
    async fn payment_events(&self, since: u64) -> StoreResult<Vec<(String, u64)>>;
    /// One more than the largest product, sale, coupon or order id.
    async fn next_id(&self) -> StoreResult<u64>;
}
