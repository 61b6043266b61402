//! A fresh database per test on the PostgreSQL of the test machine
//! (127.0.0.1:5432, user `postgres`, trust auth; `FLASHCAST_TEST_POSTGRES`
//! overrides the server URL), so tests run in parallel. Unreachable is a
//! failure, not a skip: CI runs PostgreSQL.

use tokio_postgres::NoTls;

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

fn server() -> String {
    std::env::var("FLASHCAST_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_SERVER.into())
}

/// Runs `sql` on the server's `postgres` database (admin statements).
pub(crate) async fn admin(sql: &str) -> Vec<tokio_postgres::Row> {
    query(&format!("{}/postgres", server()), sql).await
}

/// Runs `sql` on the database at `url` through a connection of its own.
pub(crate) async fn query(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let (client, conn) = match tokio_postgres::connect(url, NoTls).await {
        Ok(c) => c,
        Err(e) => panic!(
            "PostgreSQL is unreachable at {url} (default 127.0.0.1:5432): {}. The store \
             tests need it running (trust auth, user postgres); CI starts one.",
            super::describe(&e)
        ),
    };
    let driver = tokio::spawn(conn);
    let rows = client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(client);
    let _ = driver.await;
    rows
}

/// A database of its own, dropped (best effort) with this value.
pub(crate) struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub(crate) async fn create() -> TestDb {
        let name = format!("flashcast_test_{:016x}", rand::random::<u64>());
        admin(&format!("CREATE DATABASE {name}")).await;
        TestDb {
            url: format!("{}/{name}", server()),
            name,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop cannot await, and may run inside a runtime: a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let (client, conn) =
                    tokio_postgres::connect(&format!("{}/postgres", server()), NoTls)
                        .await
                        .ok()?;
                tokio::spawn(conn);
                client.batch_execute(&sql).await.ok()
            })
        });
        let _ = dropped.join();
    }
}
