//! Test databases: SQLite in a fresh temp dir, or a fresh PostgreSQL database per test.
//!
//! PostgreSQL is found at `MINTGATE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it is unreachable the PostgreSQL variant of a
//! test passes with a note — unless `MINTGATE_REQUIRE_POSTGRES=1` (CI), where it fails.

use sea_orm::{ConnectionTrait, Database};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

fn admin_url() -> String {
    std::env::var("MINTGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_PG.to_owned())
}

/// Whether PostgreSQL tests should run. Panics if CI requires PostgreSQL and it is down.
pub async fn postgres_available() -> bool {
    let required = std::env::var("MINTGATE_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    let ok = match Database::connect(admin_url()).await {
        Ok(db) => {
            let ok = db.execute_unprepared("SELECT 1").await.is_ok();
            let _ = db.close().await;
            ok
        }
        Err(_) => false,
    };
    if !ok {
        assert!(
            !required,
            "MINTGATE_REQUIRE_POSTGRES=1 but PostgreSQL at {} is unreachable",
            admin_url()
        );
        eprintln!(
            "note: PostgreSQL at {} unreachable; skipping the PostgreSQL variant",
            admin_url()
        );
    }
    ok
}

/// One test's database.
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres {
        name: String,
        /// A tablespace made for this database alone, dropped with it.
        tablespace: Option<String>,
    },
    Placeholder,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("mintgate.db").display()
                );
                Self {
                    url,
                    kind: Kind::Sqlite(dir),
                }
            }
            Backend::Postgres => Self::create_postgres(None).await,
        }
    }

    /// A database of `backend` whose files live in `dir`, which is made: for SQLite the file,
    /// for PostgreSQL a tablespace (the server must run on this host as user `postgres`).
    pub async fn create_in(backend: Backend, dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}?mode=rwc", dir.join("mintgate.db").display()),
                kind: Kind::Placeholder,
            },
            Backend::Postgres => Self::create_postgres(Some(dir)).await,
        }
    }

    async fn create_postgres(dir: Option<&std::path::Path>) -> Self {
        let name = format!("mintgate_test_{}", hex::encode(rand_bytes()));
        let admin = Database::connect(admin_url()).await.unwrap();
        let tablespace = match dir {
            Some(dir) => {
                let owned = std::process::Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(dir)
                    .status();
                assert!(owned.is_ok_and(|s| s.success()), "chown {}", dir.display());
                let tablespace = format!("{name}_space");
                let sql = format!(
                    "CREATE TABLESPACE {tablespace} LOCATION '{}'",
                    dir.display()
                );
                admin.execute_unprepared(&sql).await.unwrap();
                Some(tablespace)
            }
            None => None,
        };
        let create = match &tablespace {
            Some(t) => format!("CREATE DATABASE {name} TABLESPACE {t}"),
            None => format!("CREATE DATABASE {name}"),
        };
        admin.execute_unprepared(&create).await.unwrap();
        let _ = admin.close().await;
        let base = admin_url();
        let url = match base.rfind('/') {
            Some(i) if i > "postgres://".len() => format!("{}/{name}", &base[..i]),
            _ => format!("{base}/{name}"),
        };
        Self {
            url,
            kind: Kind::Postgres { name, tablespace },
        }
    }

    /// Another handle on the database at `url` (a replica's): dropping it leaves the database.
    pub fn shared(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            kind: Kind::Placeholder,
        }
    }

    pub(crate) fn placeholder() -> Self {
        Self {
            url: String::new(),
            kind: Kind::Placeholder,
        }
    }

    /// The same PostgreSQL database, reached through `addr` (a proxy in front of the server).
    pub fn through(mut self, addr: std::net::SocketAddr) -> Self {
        let rest = self
            .url
            .split_once('@')
            .map(|(user, rest)| (user.to_owned(), rest.to_owned()));
        if let Some((user, rest)) = rest {
            let path = rest.find('/').map_or("", |i| &rest[i..]);
            self.url = format!("{user}@{addr}{path}");
        }
        self
    }

    /// The host and port of a PostgreSQL database's server.
    pub fn server_addr(&self) -> std::net::SocketAddr {
        let rest = self.url.split_once('@').map_or("", |(_, rest)| rest);
        let host = rest.split('/').next().unwrap_or_default();
        let host = if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:5432")
        };
        std::net::ToSocketAddrs::to_socket_addrs(&host)
            .unwrap()
            .next()
            .unwrap()
    }

    pub async fn drop_database(mut self) {
        if let Kind::Postgres { name, tablespace } =
            std::mem::replace(&mut self.kind, Kind::Placeholder)
        {
            drop_postgres(&name, tablespace.as_deref()).await;
        }
    }
}

impl Drop for TestDatabase {
    /// A test that panicked never reached [`TestDatabase::drop_database`]: its PostgreSQL
    /// database goes here, on a thread of its own (this may run inside the test's runtime).
    fn drop(&mut self) {
        if let Kind::Postgres { name, tablespace } =
            std::mem::replace(&mut self.kind, Kind::Placeholder)
        {
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(runtime) = runtime {
                    runtime.block_on(drop_postgres(&name, tablespace.as_deref()));
                }
            })
            .join();
        }
    }
}

async fn drop_postgres(name: &str, tablespace: Option<&str>) {
    if let Ok(admin) = Database::connect(admin_url()).await {
        let _ = admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
        if let Some(t) = tablespace {
            let _ = admin
                .execute_unprepared(&format!("DROP TABLESPACE IF EXISTS {t}"))
                .await;
        }
        let _ = admin.close().await;
    }
}

fn rand_bytes() -> [u8; 8] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish().to_le_bytes()
}

/// Runs `body` once on SQLite and once on PostgreSQL (when available) as two tests.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::db::postgres_available().await {
                    super::$body($crate::Backend::Postgres).await;
                }
            }
        }
    };
}

/// Key of the PostgreSQL advisory lock every replica's writer takes (mintgate-store's
/// `write.rs`).
pub const WRITER_LOCK_KEY: i64 = 0x6d69_6e74_6761_7465;

/// Takes the database's write lock on `db` as another replica's writer would, and keeps it
/// until the returned transaction ends: an IMMEDIATE transaction on SQLite (readers go on in
/// WAL mode), the writers' advisory lock on PostgreSQL.
pub async fn hold_write_lock(db: &sea_orm::DatabaseConnection) -> sea_orm::DatabaseTransaction {
    use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait};
    let lock = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await
        .unwrap();
    if lock.get_database_backend() == sea_orm::DbBackend::Postgres {
        lock.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({WRITER_LOCK_KEY})"))
            .await
            .unwrap();
    }
    lock
}
