//! The commerce REST API: catalog, pin, sales, coupon drops, orders (JSON
//! and CSV) under the admin key, and the signed payment webhook. The same
//! `Commerce` calls serve the host's WebSocket actions; this is the door for
//! back offices and payment providers.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{parse, Admin, AdminRoom, JsonBody, PathId};
use super::{ApiError, ApiResult, AppState, ErrorBody};
use crate::commerce::catalog::ProductSpec;
use crate::commerce::payment::{self, PaymentEvent};
use crate::commerce::OrderFilter;
use crate::commerce::{CommerceError, CouponSpec, SaleSpec};
use flashcast_wire::commerce::{CouponView, OrderStatus, OrderView, Product, SaleView};
use flashcast_wire::ids::{OrderId, ProductId, RoomId, SaleId, UserId};
use flashcast_wire::ErrorCode;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_products, create_product))
        .routes(routes!(get_product, update_product))
        .routes(routes!(pin_product))
        .routes(routes!(list_sales, create_sale))
        .routes(routes!(get_sale))
        .routes(routes!(end_sale))
        .routes(routes!(list_coupons, drop_coupon))
        .routes(routes!(list_orders))
        .routes(routes!(export_orders))
        .routes(routes!(get_order))
        .routes(routes!(cancel_order))
        .routes(routes!(payment_webhook))
}

/// The HTTP status of each commerce refusal.
pub fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        Malformed | InvalidArgument | BadQuantity => StatusCode::BAD_REQUEST,
        Unauthorized | BadSignature => StatusCode::UNAUTHORIZED,
        RoomNotFound | NotFound | OrderNotFound | UnknownSku | CouponUnknown => {
            StatusCode::NOT_FOUND
        }
        AmountMismatch => StatusCode::UNPROCESSABLE_ENTITY,
        LimitReached => StatusCode::SERVICE_UNAVAILABLE,
        Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::CONFLICT,
    }
}

impl From<CommerceError> for ApiError {
    fn from(e: CommerceError) -> Self {
        ApiError::new(status_of(e.code), e.code, e.message)
    }
}

fn created<T: serde::Serialize>(v: T) -> ApiResult {
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

// ------------------------------------------------------------- catalog

/// Products of a room's catalog.
#[utoipa::path(get, path = "/api/v1/rooms/{room}/products", tag = "catalog",
    params(("room" = String, Path)),
    responses((status = 200, body = Vec<Product>), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn list_products(State(app): State<AppState>, AdminRoom(room): AdminRoom) -> ApiResult {
    let products: Vec<Product> = app
        .commerce
        .products(room.id())
        .await?
        .iter()
        .map(|p| (**p).clone())
        .collect();
    Ok(Json(products).into_response())
}

/// Adds a product with its variants (SKUs unique within the room).
#[utoipa::path(post, path = "/api/v1/rooms/{room}/products", tag = "catalog",
    params(("room" = String, Path)), request_body = ProductSpec,
    responses((status = 201, body = Product), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn create_product(
    State(app): State<AppState>,
    AdminRoom(room): AdminRoom,
    JsonBody(spec): JsonBody<ProductSpec>,
) -> ApiResult {
    created(app.commerce.create_product(room.id(), spec).await?)
}

#[utoipa::path(get, path = "/api/v1/rooms/{room}/products/{product_id}", tag = "catalog",
    params(("room" = String, Path), ("product_id" = u64, Path)),
    responses((status = 200, body = Product), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn get_product(
    State(app): State<AppState>,
    AdminRoom(room): AdminRoom,
    PathId(id): PathId,
) -> ApiResult {
    let product = app.commerce.product(room.id(), ProductId(id)).await?;
    Ok(Json((*product).clone()).into_response())
}

/// Replaces a product. Running sales keep the terms they started with.
#[utoipa::path(put, path = "/api/v1/rooms/{room}/products/{product_id}", tag = "catalog",
    params(("room" = String, Path), ("product_id" = u64, Path)), request_body = ProductSpec,
    responses((status = 200, body = Product), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn update_product(
    State(app): State<AppState>,
    AdminRoom(room): AdminRoom,
    PathId(id): PathId,
    JsonBody(spec): JsonBody<ProductSpec>,
) -> ApiResult {
    let product = app
        .commerce
        .update_product(room.id(), ProductId(id), spec)
        .await?;
    Ok(Json(product).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Pin {
    /// `null` unpins.
    product_id: Option<ProductId>,
}

/// Pins a product card for every viewer of the room (or unpins).
#[utoipa::path(put, path = "/api/v1/rooms/{room}/pin", tag = "catalog",
    params(("room" = String, Path)), request_body = Pin,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn pin_product(
    State(app): State<AppState>,
    AdminRoom(room): AdminRoom,
    JsonBody(pin): JsonBody<Pin>,
) -> ApiResult {
    app.commerce.pin(room.id(), pin.product_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// --------------------------------------------------------------- sales

#[utoipa::path(get, path = "/api/v1/rooms/{room}/sales", tag = "sales",
    params(("room" = String, Path)),
    responses((status = 200, body = Vec<SaleView>), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn list_sales(State(app): State<AppState>, AdminRoom(room): AdminRoom) -> ApiResult {
    Ok(Json(app.commerce.sales(room.id()).await?).into_response())
}

/// Schedules a flash sale on one SKU (now, or at `starts_at`).
#[utoipa::path(post, path = "/api/v1/rooms/{room}/sales", tag = "sales",
    params(("room" = String, Path)), request_body = SaleSpec,
    responses((status = 201, body = SaleView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn create_sale(
    State(app): State<AppState>,
    AdminRoom(room): AdminRoom,
    JsonBody(spec): JsonBody<SaleSpec>,
) -> ApiResult {
    created(app.commerce.start_sale(room.id(), spec).await?)
}

#[utoipa::path(get, path = "/api/v1/rooms/{room}/sales/{sale_id}", tag = "sales",
    params(("room" = String, Path), ("sale_id" = u64, Path)),
    responses((status = 200, body = SaleView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn get_sale(
    State(app): State<AppState>,
    AdminRoom(room): AdminRoom,
    PathId(id): PathId,
) -> ApiResult {
    Ok(Json(app.commerce.sale(room.id(), SaleId(id)).await?).into_response())
}

/// Ends a sale early. Reservations already made can still be paid.
#[utoipa::path(post, path = "/api/v1/rooms/{room}/sales/{sale_id}/end", tag = "sales",
    params(("room" = String, Path), ("sale_id" = u64, Path)),
    responses((status = 200, body = SaleView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn end_sale(
    State(app): State<AppState>,
    AdminRoom(room): AdminRoom,
    PathId(id): PathId,
) -> ApiResult {
    Ok(Json(app.commerce.end_sale(room.id(), SaleId(id)).await?).into_response())
}

// ------------------------------------------------------------- coupons

#[utoipa::path(get, path = "/api/v1/rooms/{room}/coupons", tag = "coupons",
    params(("room" = String, Path)),
    responses((status = 200, body = Vec<CouponView>), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn list_coupons(State(app): State<AppState>, AdminRoom(room): AdminRoom) -> ApiResult {
    Ok(Json(app.commerce.coupons(room.id()).await?).into_response())
}

/// Drops N first-come coupons into the room.
#[utoipa::path(post, path = "/api/v1/rooms/{room}/coupons", tag = "coupons",
    params(("room" = String, Path)), request_body = CouponSpec,
    responses((status = 201, body = CouponView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn drop_coupon(
    State(app): State<AppState>,
    AdminRoom(room): AdminRoom,
    JsonBody(spec): JsonBody<CouponSpec>,
) -> ApiResult {
    created(app.commerce.drop_coupon(room.id(), spec).await?)
}

// -------------------------------------------------------------- orders

/// Filters of the order queries; all optional, combined with AND.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct OrderQuery {
    room: Option<String>,
    user_id: Option<String>,
    sale_id: Option<u64>,
    /// reserved, paid, expired or cancelled.
    status: Option<String>,
    /// Only orders with a larger id (the last id of the previous page).
    after: Option<u64>,
    /// Page size, at most `max_orders_page` (the default).
    limit: Option<usize>,
}

impl OrderQuery {
    fn filter(self, max: usize) -> Result<OrderFilter, ApiError> {
        let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument, m);
        let limit = self.limit.unwrap_or(max);
        if limit == 0 || limit > max {
            return Err(bad(&format!("limit must be 1-{max}")));
        }
        Ok(OrderFilter {
            room: self
                .room
                .map(|r| RoomId::new(&r))
                .transpose()
                .map_err(|_| bad("room: not a valid id"))?,
            user: self
                .user_id
                .map(|u| UserId::new(&u))
                .transpose()
                .map_err(|_| bad("user_id: not a valid id"))?,
            sale: self.sale_id.map(SaleId),
            status: self
                .status
                .map(|s| OrderStatus::parse(&s).ok_or(()))
                .transpose()
                .map_err(|_| bad("status: reserved, paid, expired or cancelled"))?,
            after: self.after.map(OrderId),
            limit,
        })
    }
}

/// The order filter of the query string, pages bounded by
/// `max_orders_page`; else 400 `invalid_argument`.
struct Filter(OrderFilter);

impl FromRequestParts<AppState> for Filter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let Query(q) = Query::<OrderQuery>::from_request_parts(parts, app)
            .await
            .map_err(|e: QueryRejection| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidArgument,
                    e.body_text(),
                )
            })?;
        q.filter(app.limits.max_orders_page).map(Filter)
    }
}

/// Orders, oldest first, from the durable store.
#[utoipa::path(get, path = "/api/v1/orders", tag = "orders", params(OrderQuery),
    responses((status = 200, body = Vec<OrderView>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn list_orders(State(app): State<AppState>, _: Admin, Filter(filter): Filter) -> ApiResult {
    Ok(Json(app.commerce.orders(filter).await?).into_response())
}

/// The same orders as CSV (one header row, then one row per order).
#[utoipa::path(get, path = "/api/v1/orders.csv", tag = "orders", params(OrderQuery),
    responses((status = 200, content_type = "text/csv", body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn export_orders(State(app): State<AppState>, _: Admin, Filter(filter): Filter) -> ApiResult {
    let orders = app.commerce.orders(filter).await?;
    let csv = orders_csv(&orders).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"orders.csv\"",
            ),
        ],
        csv,
    )
        .into_response())
}

/// The CSV columns, in order.
pub const CSV_HEADER: [&str; 20] = [
    "id",
    "room",
    "sale_id",
    "product_id",
    "sku",
    "label",
    "user_id",
    "user_name",
    "key",
    "qty",
    "currency",
    "unit_price_minor",
    "discount_minor",
    "total_minor",
    "coupon_id",
    "status",
    "created_at",
    "deadline",
    "paid_at",
    "closed_at",
];

fn orders_csv(orders: &[OrderView]) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_HEADER)?;
    for o in orders {
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        w.write_record([
            o.id.to_string(),
            o.room.to_string(),
            o.sale_id.to_string(),
            o.product_id.to_string(),
            o.sku.to_string(),
            o.label.clone(),
            o.user_id.to_string(),
            o.user_name.clone(),
            o.key.to_string(),
            o.qty.to_string(),
            o.total.currency.to_string(),
            o.unit_price.minor.to_string(),
            o.discount_minor.to_string(),
            o.total.minor.to_string(),
            opt(o.coupon_id.map(|c| c.0)),
            o.status.as_str().to_string(),
            o.created_at.to_string(),
            o.deadline.to_string(),
            opt(o.paid_at),
            opt(o.closed_at),
        ])?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8(bytes).expect("CSV of UTF-8 fields is UTF-8"))
}

#[utoipa::path(get, path = "/api/v1/orders/{order_id}", tag = "orders",
    params(("order_id" = u64, Path)),
    responses((status = 200, body = OrderView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn get_order(State(app): State<AppState>, _: Admin, PathId(id): PathId) -> ApiResult {
    Ok(Json(app.commerce.order(OrderId(id)).await?).into_response())
}

/// Cancels a reserved or paid order; its units go back to stock.
#[utoipa::path(post, path = "/api/v1/orders/{order_id}/cancel", tag = "orders",
    params(("order_id" = u64, Path)),
    responses((status = 200, body = OrderView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("admin_key" = [])))]
async fn cancel_order(State(app): State<AppState>, _: Admin, PathId(id): PathId) -> ApiResult {
    Ok(Json(app.commerce.cancel(OrderId(id)).await?).into_response())
}

/// Payment confirmation from the payment provider. Signed, not admin-keyed:
/// `Flashcast-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
#[utoipa::path(post, path = "/api/v1/payments/webhook", tag = "orders",
    request_body = PaymentEvent,
    params(("Flashcast-Signature" = String, Header, description = "t=<unix secs>,v1=<hex hmac>")),
    responses((status = 200, body = OrderView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn payment_webhook(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let signature = headers
        .get(payment::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let now_secs = app.clock.now_secs();
    payment::verify(
        app.commerce.webhook_secret(),
        signature,
        &body,
        now_secs,
        app.limits.webhook_tolerance_secs,
    )?;
    let event: PaymentEvent = parse(&body)?;
    Ok(Json(app.commerce.pay(event).await?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_a_status() {
        for code in ErrorCode::ALL {
            let s = status_of(code);
            assert!(s.is_client_error() || s.is_server_error(), "{code:?}");
        }
        assert_eq!(status_of(ErrorCode::BadSignature), StatusCode::UNAUTHORIZED);
        assert_eq!(status_of(ErrorCode::WebhookReplayed), StatusCode::CONFLICT);
    }
}
