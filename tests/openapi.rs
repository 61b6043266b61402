//! The OpenAPI document at /api/v1/openapi.json against the real server:
//! every documented operation exists and answers only with statuses it
//! documents (with the JSON error body), every schema reference resolves,
//! and real responses carry every field their schema requires. Routes are
//! registered together with their descriptions (utoipa-axum), so a route
//! cannot exist undocumented; this test catches the document lying.

mod common;

use common::{create_product, create_sale, TestServer};
use flashcast_wire::{Encoding, Role};
use reqwest::Method;
use serde_json::{json, Value};

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    out.push(v.as_str().unwrap().to_string());
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_openapi_document_matches_the_handlers() {
    let s = TestServer::start(&[]).await;
    let product = create_product(&s, "demo", &["DOC-1"]).await;
    let sale = create_sale(&s, "demo", "DOC-1", 5, json!({})).await;
    let mut ann = s.joined(Encoding::Json, "demo", "ann", Role::Viewer).await;
    let order = ann.buy("DOC-1", 1, "doc", None).await.unwrap();

    let r = reqwest::get(s.http("/api/v1/openapi.json")).await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let schemas = doc["components"]["schemas"].as_object().unwrap();

    // No dangling references.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        assert!(schemas.contains_key(name), "dangling $ref {r}");
    }

    let paths = doc["paths"].as_object().unwrap();
    for expected in [
        "/api/v1/rooms",
        "/api/v1/tokens",
        "/api/v1/rooms/{room}/products",
        "/api/v1/rooms/{room}/sales",
        "/api/v1/rooms/{room}/coupons",
        "/api/v1/orders",
        "/api/v1/orders.csv",
        "/api/v1/payments/webhook",
        "/api/v1/rooms/{id}/recording",
        "/whip/{room}",
        "/whep/{room}",
        "/whip/{room}/{session}",
        "/whep/{room}/{session}",
    ] {
        assert!(paths.contains_key(expected), "{expected} is not documented");
    }

    let mut calls = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let documented: Vec<u16> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.parse().unwrap())
                .collect();
            let url = path
                .replace("{room}", "demo")
                .replace("{id}", "demo")
                .replace("{product_id}", &product["id"].to_string())
                .replace("{sale_id}", &sale["id"].to_string())
                .replace("{order_id}", &order["id"].to_string());
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            // Bodies are empty objects: valid calls are not the point, the
            // statuses the handler can answer with are.
            let mut req = s.admin(method.clone(), &url);
            if op.get("requestBody").is_some() {
                req = req.json(&json!({}));
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            assert!(
                documented.contains(&status),
                "{method} {url} answered {status}, documented {documented:?}"
            );
            if status >= 400 {
                let body: Value = resp.json().await.unwrap_or_else(|_| {
                    panic!("{method} {url}: {status} without the JSON error body")
                });
                assert!(body["error"]["code"].is_string(), "{method} {url}: {body}");
            }
            calls += 1;
            // Without the admin key, every admin operation is 401 and says so.
            if op.get("security").is_some() {
                let resp = reqwest::Client::new()
                    .request(method.clone(), s.http(&url))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 401, "{method} {url} without the key");
                assert!(documented.contains(&401));
            }
        }
    }
    assert!(calls >= 17, "only {calls} operations documented");

    // Real bodies carry every field their schema requires.
    let check = |schema: &str, body: &Value| {
        let required = schemas[schema]["required"].as_array().unwrap();
        for field in required {
            let f = field.as_str().unwrap();
            assert!(body.get(f).is_some(), "{schema} lacks required {f}: {body}");
        }
        for key in body.as_object().unwrap().keys() {
            assert!(
                schemas[schema]["properties"].get(key).is_some(),
                "{schema} does not document {key}"
            );
        }
    };
    check("Product", &product);
    check("SaleView", &sale);
    check("OrderView", &order);
    s.stop().await;
}
