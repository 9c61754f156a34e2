//! `ragd keys create|list|revoke`: manage API keys in the database
//! directly, so it works on a fresh data directory and with the server
//! stopped (the server sees changes on the next request). Also the first
//! start's operator key.

use std::path::PathBuf;

use anyhow::Context;
use ragd_core::TenantId;
use ragd_server::AuthConfig;
use ragd_store::{KeyRecord, NewAuditEntry, NewKey, Role, Store, StoreConfig};

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// Directory for all state (database, blobs, index).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Make a key and print it (the only time its secret is shown).
    Create {
        /// What the key is for.
        #[arg(long)]
        name: String,
        /// read, write or admin.
        #[arg(long)]
        role: String,
        /// The tenant it belongs to; without it, an operator key for the
        /// whole server.
        #[arg(long)]
        tenant: Option<String>,
        /// Days until it stops working; without it, never.
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// Let it pass `on_behalf_of` an end user, so document ACLs apply.
        #[arg(long)]
        on_behalf_of: bool,
    },
    /// List every key (without secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

async fn connect(config: &Config) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let store_config =
        StoreConfig { url: config.store_url(), max_connections: config.store.max_connections.unwrap_or(2) };
    Ok(Store::connect(&store_config).await?)
}

/// The audit entry of a change made from the command line.
fn cli_entry(action: &str, key: &KeyRecord) -> NewAuditEntry {
    NewAuditEntry {
        key_id: None,
        tenant: key.tenant.clone(),
        action: action.to_owned(),
        target: format!("key {}", key.id),
        outcome: "ok".to_owned(),
        status: 0,
    }
}

pub async fn run(config: Config, command: KeysCommand) -> anyhow::Result<()> {
    let store = connect(&config).await?;
    match command {
        KeysCommand::Create { name, role, tenant, expires_in_days, on_behalf_of } => {
            let role: Role = role.parse()?;
            let tenant = tenant.as_deref().map(TenantId::parse).transpose()?;
            let expires_at = expires_in_days.map(|days| now_ms() + i64::from(days) * 86_400_000);
            let (record, token) =
                store.create_key(&NewKey { tenant, name, role, on_behalf_of, expires_at }).await?;
            store.record_audit(&cli_entry("key.create", &record)).await?;
            eprintln!("key {} ({}, {}): shown once, keep it", record.id, record.role, scope(&record));
            println!("{}", token.expose());
        }
        KeysCommand::List => {
            println!("{:<32}  {:<5}  {:<16}  {:<7}  {:<8}  name", "id", "role", "tenant", "behalf", "state");
            let now = now_ms();
            for key in store.list_keys(None).await? {
                let state = if key.revoked_at.is_some() {
                    "revoked"
                } else if key.expires_at.is_some_and(|at| at <= now) {
                    "expired"
                } else {
                    "active"
                };
                let behalf = if key.on_behalf_of { "yes" } else { "no" };
                println!(
                    "{:<32}  {:<5}  {:<16}  {behalf:<7}  {state:<8}  {}",
                    key.id,
                    key.role,
                    scope(&key),
                    key.name
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let record = store.revoke_key(id.parse()?, None).await?;
            store.record_audit(&cli_entry("key.revoke", &record)).await?;
            eprintln!("key {} revoked", record.id);
        }
    }
    store.close().await;
    Ok(())
}

fn scope(key: &KeyRecord) -> String {
    key.tenant.as_ref().map_or_else(|| "(operator)".to_owned(), ToString::to_string)
}

fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// On the first start, with no admin key configured and no key in the
/// database, makes an operator admin key and prints it once, on stdout and
/// not through the logs (which may be shipped elsewhere).
pub async fn bootstrap(store: &Store, auth: &AuthConfig) -> anyhow::Result<()> {
    if !auth.admin_key.is_empty() || store.key_count().await? > 0 {
        return Ok(());
    }
    let new = NewKey {
        tenant: None,
        name: "first operator key".to_owned(),
        role: Role::Admin,
        on_behalf_of: true,
        expires_at: None,
    };
    let (record, token) = store.create_key(&new).await?;
    store.record_audit(&cli_entry("key.create", &record)).await?;
    tracing::info!(key = %record.id, "made the first operator key");
    println!("ragd: this is the operator admin key, shown only now (the database keeps its hash only):");
    println!();
    println!("    {}", token.expose());
    println!();
    println!("ragd: send it as 'Authorization: Bearer <key>'; make more keys with POST /v1/keys or `ragd keys create`");
    Ok(())
}
