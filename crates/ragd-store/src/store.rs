use std::fmt::Display;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

use crate::error::{Error, Result};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");

/// Where the metadata lives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` (default `sqlite://data/ragd.db`; the file and its
    /// directory are created when missing) or `postgres://USER@HOST:PORT/DB`.
    pub url: String,
    /// Pool size (default 8).
    pub max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { url: "sqlite://data/ragd.db".to_owned(), max_connections: 8 }
    }
}

/// How the job queue retries: a job is tried at most `max_attempts` times,
/// waiting `retry_base_ms * 2^(attempt - 1)` (capped at `retry_max_ms`)
/// before a retry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueuePolicy {
    /// Default 5.
    pub max_attempts: u32,
    /// Default 1000.
    pub retry_base_ms: u64,
    /// Default 300000 (5 minutes).
    pub retry_max_ms: u64,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        Self { max_attempts: 5, retry_base_ms: 1_000, retry_max_ms: 300_000 }
    }
}

impl QueuePolicy {
    /// The wait before the retry that follows attempt number `attempts`.
    pub(crate) fn backoff_ms(&self, attempts: i64) -> i64 {
        let doublings =
            u32::try_from(attempts.saturating_sub(1).max(0)).unwrap_or(u32::MAX).min(32);
        let wait = self.retry_base_ms.saturating_mul(1u64 << doublings).min(self.retry_max_ms);
        i64::try_from(wait).unwrap_or(i64::MAX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn of_url(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else {
            // Only the scheme: the rest may hold a password.
            let scheme = url.split(':').next().unwrap_or_default();
            Err(Error::UnsupportedUrl(scheme.to_owned()))
        }
    }

    fn migrator(self) -> &'static Migrator {
        match self {
            Self::Sqlite => &SQLITE_MIGRATIONS,
            Self::Postgres => &POSTGRES_MIGRATIONS,
        }
    }
}

/// The handle to all of ragd's metadata. Cloning is cheap (a pool handle).
///
/// Every query is written once for both engines: ids are uuid strings, JSON
/// is text, timestamps are unix milliseconds, placeholders are `$n` (which
/// SQLite also accepts). Queries branch on [`Backend`] only where the SQL
/// must differ.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
    pub(crate) policy: QueuePolicy,
}

impl Store {
    /// Opens the pool and applies the pending migrations.
    #[tracing::instrument(name = "store.connect", skip_all)]
    pub async fn connect(config: &StoreConfig) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(&config.url)?;
        let url = match backend {
            Backend::Sqlite => prepare_sqlite(&config.url).await?,
            Backend::Postgres => config.url.clone(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run while a writer commits; the busy
                        // timeout makes concurrent writers wait instead of
                        // failing with "database is locked".
                        conn.execute(
                            "PRAGMA busy_timeout = 5000; \
                             PRAGMA journal_mode = WAL; \
                             PRAGMA foreign_keys = ON",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        backend.migrator().run(&pool).await?;
        tracing::info!(?backend, "store ready");
        Ok(Store { pool, backend, policy: QueuePolicy::default() })
    }

    /// Replaces the default [`QueuePolicy`] for jobs enqueued and failed
    /// through this handle.
    pub fn with_queue_policy(mut self, policy: QueuePolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A transaction that holds the database's write lock from its start on
    /// SQLite. A deferred transaction that reads before it writes fails
    /// (instead of waiting) when another connection committed a write in
    /// between, which the workers do all the time.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Waits for the connections in use to be returned, then closes them all.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Makes SQLite create the database file, and its directory, when missing.
async fn prepare_sqlite(url: &str) -> Result<String> {
    let options = SqliteConnectOptions::from_str(url)?;
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(url.to_owned());
    }
    if let Some(dir) = options.get_filename().parent() {
        if !dir.as_os_str().is_empty() {
            tokio::fs::create_dir_all(dir).await?;
        }
    }
    if url.contains("mode=") {
        return Ok(url.to_owned());
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{separator}mode=rwc"))
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// `$first, $first+1, ...` for an `IN (...)` list of `count` values.
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

/// Reads a text column and parses it with `parse`, reporting a value that
/// does not parse as corrupt.
pub(crate) fn column<T, E: Display>(
    row: &AnyRow,
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T> {
    let raw: String = row.try_get(name)?;
    parse(&raw).map_err(|err| Error::corrupt(format_args!("column {name} = {raw:?}: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = QueuePolicy { max_attempts: 9, retry_base_ms: 100, retry_max_ms: 1_000 };
        let waits: Vec<i64> = (0..=6).map(|attempts| policy.backoff_ms(attempts)).collect();
        assert_eq!(waits, [100, 100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(policy.backoff_ms(i64::MAX), 1_000);
    }

    #[test]
    fn backends_by_url_scheme() {
        assert_eq!(Backend::of_url("sqlite://x.db").ok(), Some(Backend::Sqlite));
        assert_eq!(Backend::of_url("postgres://u@h/db").ok(), Some(Backend::Postgres));
        assert_eq!(Backend::of_url("postgresql://u@h/db").ok(), Some(Backend::Postgres));
        match Backend::of_url("mysql://root:secret@h/db") {
            Err(Error::UnsupportedUrl(scheme)) => assert_eq!(scheme, "mysql"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn placeholder_lists() {
        assert_eq!(placeholders(4, 3), "$4, $5, $6");
        assert_eq!(placeholders(1, 1), "$1");
    }
}
