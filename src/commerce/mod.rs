//! Flash sales: where an order is decided. So far: the lock-free stock
//! counter every purchase goes through. (Catalog, sales, coupons,
//! reservations and durable orders build on it.)

pub mod stock;
