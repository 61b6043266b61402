//! The server's admin API as the load tester uses it: a fresh room, tokens,
//! the products, sales and coupon drops a scenario needs, and afterwards
//! the durable orders to check the flash sale against.

use std::time::Duration;

use anyhow::{bail, Context};
use flashcast_wire::Role;
use serde_json::{json, Value};

/// Tokens minted at once by one process.
const MINT_CONCURRENCY: usize = 32;
/// Orders fetched per page when counting a sale's orders.
const ORDERS_PAGE: usize = 1_000;

#[derive(Clone)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Admin {
    pub fn new(base_url: &str, key: Option<String>) -> Admin {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(MINT_CONCURRENCY)
            .build()
            .expect("http client builds");
        Admin {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            key,
        }
    }

    fn key(&self) -> anyhow::Result<&str> {
        self.key.as_deref().context(
            "this scenario needs the admin key: pass --admin-key or set FLASHCAST_ADMIN_KEY",
        )
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("Authorization", format!("Bearer {}", self.key()?));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{method} {path}: {status}: {text}");
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON: {text}"))
    }

    pub async fn create_room(&self, id: &str, title: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            "/api/v1/rooms",
            Some(json!({"id": id, "title": title, "allow_guests": true})),
        )
        .await
        .map(|_| ())
    }

    pub async fn close_room(&self, id: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/api/v1/rooms/{id}"),
            None,
        )
        .await
        .map(|_| ())
    }

    pub async fn mint(&self, room: &str, user: &str, role: Role) -> anyhow::Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/api/v1/tokens",
                Some(json!({"room": room, "user_id": user, "name": user, "role": role, "ttl_secs": 86_400})),
            )
            .await?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .context("token missing from the answer")
    }

    /// One viewer token per user id, minted a few at a time.
    pub async fn mint_many(&self, room: &str, users: Vec<String>) -> anyhow::Result<Vec<String>> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        stream::iter(users)
            .map(|u| async move { self.mint(room, &u, Role::Viewer).await })
            .buffered(MINT_CONCURRENCY)
            .try_collect()
            .await
    }

    /// A one-variant product for a flash sale; returns nothing (the sale
    /// refers to the SKU).
    pub async fn create_product(
        &self,
        room: &str,
        sku: &str,
        price_minor: u64,
    ) -> anyhow::Result<()> {
        let body = json!({
            "title": format!("Storm item {sku}"),
            "currency": "USD",
            "variants": [{"sku": sku, "price_minor": price_minor * 2}],
        });
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/rooms/{room}/products"),
            Some(body),
        )
        .await
        .map(|_| ())
    }

    /// Creates a sale starting at `starts_at` (unix ms); returns its id.
    pub async fn create_sale(&self, room: &str, spec: Value) -> anyhow::Result<u64> {
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/rooms/{room}/sales"),
                Some(spec),
            )
            .await?;
        v["id"].as_u64().context("sale id missing from the answer")
    }

    pub async fn sale(&self, room: &str, id: u64) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::GET,
            &format!("/api/v1/rooms/{room}/sales/{id}"),
            None,
        )
        .await
    }

    pub async fn drop_coupons(&self, room: &str, count: u32, percent: u8) -> anyhow::Result<u64> {
        let body = json!({
            "count": count,
            "discount": {"kind": "percent", "percent": percent},
            "expires_in_secs": 600,
        });
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/rooms/{room}/coupons"),
                Some(body),
            )
            .await?;
        v["id"]
            .as_u64()
            .context("coupon id missing from the answer")
    }

    /// Every durable order of a sale, all pages.
    pub async fn sale_orders(&self, sale_id: u64) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut after = None::<u64>;
        loop {
            let mut path = format!("/api/v1/orders?sale_id={sale_id}&limit={ORDERS_PAGE}");
            if let Some(a) = after {
                path.push_str(&format!("&after={a}"));
            }
            let page = self.call(reqwest::Method::GET, &path, None).await?;
            let page = page.as_array().cloned().unwrap_or_default();
            let n = page.len();
            after = page.last().and_then(|o| o["id"].as_u64());
            all.extend(page);
            if n < ORDERS_PAGE {
                return Ok(all);
            }
        }
    }

    /// The server's Prometheus text, if it answers.
    pub async fn metrics_text(&self) -> Option<String> {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        resp.status().is_success().then_some(())?;
        resp.text().await.ok()
    }
}
