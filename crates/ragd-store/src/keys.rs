//! API keys. A key is `ragd_<id>_<secret>`: the id finds the row, and only
//! the SHA-256 of the secret is stored, so the database never holds a
//! usable key. The secret is shown once, when the key is made.

use std::fmt;
use std::str::FromStr;

use ragd_core::TenantId;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::store::{column, now_ms, Store};

const PREFIX: &str = "ragd_";
/// Random bytes in a secret: 256 bits, beyond any guessing.
const SECRET_BYTES: usize = 32;

/// What a key may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// List, get, search, query, chat, embed.
    Read,
    /// Also create and delete collections and documents.
    Write,
    /// Also manage keys and read the audit log (of its tenant, or of the
    /// whole server for an operator key).
    Admin,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = ragd_core::Error;
    fn from_str(s: &str) -> ragd_core::Result<Self> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "admin" => Ok(Self::Admin),
            _ => Err(ragd_core::Error::invalid(format!("role {s:?} must be read, write or admin"))),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key's public id: 32 hex digits, time ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Uuid);

impl KeyId {
    fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl FromStr for KeyId {
    type Err = ragd_core::Error;
    fn from_str(s: &str) -> ragd_core::Result<Self> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| ragd_core::Error::invalid(format!("{s:?} is not a valid key id")))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.simple().fmt(f)
    }
}

/// A whole key as given to its owner. Its `Debug` hides the secret, so a
/// key never reaches a log by accident.
#[derive(Clone)]
pub struct KeyToken(String);

impl KeyToken {
    /// The key to hand over, once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyToken(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// `None` makes an operator key, valid for the whole server.
    pub tenant: Option<TenantId>,
    pub name: String,
    pub role: Role,
    /// Whether the key may pass `on_behalf_of` an end user.
    pub on_behalf_of: bool,
    /// Unix milliseconds; `None` never expires.
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub tenant: Option<TenantId>,
    pub name: String,
    pub role: Role,
    pub on_behalf_of: bool,
    /// Unix milliseconds.
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Why a presented key was refused; safe to tell the caller, as only the
/// holder of the secret learns that a key expired or was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRejection {
    /// Not a ragd key, an unknown id, or a wrong secret.
    Invalid,
    Expired,
    Revoked,
}

impl KeyRejection {
    pub fn message(&self) -> &'static str {
        match self {
            Self::Invalid => "the API key is not valid",
            Self::Expired => "the API key has expired",
            Self::Revoked => "the API key has been revoked",
        }
    }
}

const COLUMNS: &str = "id, tenant, name, role, on_behalf_of, secret_hash, created_at, expires_at, revoked_at";

impl KeyRecord {
    fn from_row(row: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: column(row, "id", str::parse)?,
            tenant: row
                .try_get::<Option<String>, _>("tenant")?
                .map(|raw| {
                    TenantId::parse(&raw).map_err(|err| Error::corrupt(format_args!("column tenant: {err}")))
                })
                .transpose()?,
            name: row.try_get("name")?,
            role: column(row, "role", str::parse)?,
            on_behalf_of: row.try_get::<i64, _>("on_behalf_of")? != 0,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            revoked_at: row.try_get("revoked_at")?,
        })
    }
}

/// The stored form of a secret. SHA-256 rather than a slow password hash:
/// those exist to make guessing low-entropy passwords expensive, and a
/// 256-bit random secret cannot be guessed, so a fast hash is as safe and
/// keeps checking a key on every request cheap.
fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Splits `ragd_<id>_<secret>`; anything else is not a ragd key.
fn split_token(token: &str) -> Option<(KeyId, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    if id.len() != 32 || secret.len() != SECRET_BYTES * 2 {
        return None;
    }
    Some((id.parse().ok()?, secret))
}

fn new_secret() -> Result<String> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|err| Error::Io(std::io::Error::other(format!("no randomness: {err}"))))?;
    Ok(hex::encode(bytes))
}

impl Store {
    /// Makes a key; the returned token is the only copy of its secret.
    #[tracing::instrument(name = "store.create_key", skip_all, fields(role = %new.role))]
    pub async fn create_key(&self, new: &NewKey) -> Result<(KeyRecord, KeyToken)> {
        let id = KeyId::new();
        let secret = new_secret()?;
        let record = KeyRecord {
            id,
            tenant: new.tenant.clone(),
            name: new.name.clone(),
            role: new.role,
            on_behalf_of: new.on_behalf_of,
            created_at: now_ms(),
            expires_at: new.expires_at,
            revoked_at: None,
        };
        sqlx::query(
            "INSERT INTO api_keys (id, tenant, name, role, on_behalf_of, secret_hash, created_at, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id.to_string())
        .bind(new.tenant.as_ref().map(|t| t.as_str().to_owned()))
        .bind(&new.name)
        .bind(new.role.as_str())
        .bind(i64::from(new.on_behalf_of))
        .bind(hash_secret(&secret))
        .bind(record.created_at)
        .bind(new.expires_at)
        .execute(&self.pool)
        .await?;
        Ok((record, KeyToken(format!("{PREFIX}{id}_{secret}"))))
    }

    /// The key a request presents, if it is valid now. The secret's hash is
    /// compared in constant time, so timing tells nothing about it.
    #[tracing::instrument(name = "store.authenticate", skip_all)]
    pub async fn authenticate(&self, token: &str) -> Result<Result<KeyRecord, KeyRejection>> {
        let Some((id, secret)) = split_token(token) else {
            return Ok(Err(KeyRejection::Invalid));
        };
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1");
        let Some(row) = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&self.pool).await? else {
            return Ok(Err(KeyRejection::Invalid));
        };
        let stored: String = row.try_get("secret_hash")?;
        if !bool::from(hash_secret(secret).as_bytes().ct_eq(stored.as_bytes())) {
            return Ok(Err(KeyRejection::Invalid));
        }
        let record = KeyRecord::from_row(&row)?;
        if record.revoked_at.is_some() {
            return Ok(Err(KeyRejection::Revoked));
        }
        if record.expires_at.is_some_and(|at| at <= now_ms()) {
            return Ok(Err(KeyRejection::Expired));
        }
        Ok(Ok(record))
    }

    /// Every key of `tenant`, or every key of the server when `None`, oldest
    /// first, revoked and expired ones included.
    #[tracing::instrument(name = "store.list_keys", skip_all)]
    pub async fn list_keys(&self, tenant: Option<&TenantId>) -> Result<Vec<KeyRecord>> {
        let rows = match tenant {
            Some(tenant) => {
                let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE tenant = $1 ORDER BY id");
                sqlx::query(&sql).bind(tenant.as_str()).fetch_all(&self.pool).await?
            }
            None => {
                let sql = format!("SELECT {COLUMNS} FROM api_keys ORDER BY id");
                sqlx::query(&sql).fetch_all(&self.pool).await?
            }
        };
        rows.iter().map(KeyRecord::from_row).collect()
    }

    /// Revokes the key (of `tenant` only, when given); revoking it again
    /// keeps the first time. A key outside `tenant` is NotFound.
    #[tracing::instrument(name = "store.revoke_key", skip_all, fields(key = %id))]
    pub async fn revoke_key(&self, id: KeyId, tenant: Option<&TenantId>) -> Result<KeyRecord> {
        let tenant_clause = if tenant.is_some() { "AND tenant = $3" } else { "" };
        let sql = format!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 {tenant_clause}"
        );
        let mut query = sqlx::query(&sql).bind(now_ms()).bind(id.to_string());
        if let Some(tenant) = tenant {
            query = query.bind(tenant.as_str());
        }
        if query.execute(&self.pool).await?.rows_affected() == 0 {
            return Err(Error::NotFound(format!("key {id}")));
        }
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1");
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_one(&self.pool).await?;
        KeyRecord::from_row(&row)
    }

    /// Keys ever made, revoked ones included.
    pub async fn key_count(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_keys").fetch_one(&self.pool).await?;
        Ok(row.try_get("n")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_into_id_and_secret() {
        let id = "0190f5c27a6e7b1c9d2e3f4a5b6c7d8e";
        let secret = "ab".repeat(SECRET_BYTES);
        let token = format!("ragd_{id}_{secret}");
        let (parsed, s) = split_token(&token).expect("a key");
        assert_eq!((parsed.to_string().as_str(), s), (id, secret.as_str()));
        for bad in [
            String::new(),
            format!("ragd_{id}"),
            format!("ragd_{id}_{}", "ab".repeat(SECRET_BYTES - 1)),
            format!("xrag_{id}_{secret}"),
            format!("ragd_{}_{secret}", "z".repeat(32)),
            "Bearer something".to_owned(),
        ] {
            assert!(split_token(&bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn token_debug_hides_the_secret() {
        let token = KeyToken("ragd_x_supersecret".to_owned());
        assert!(!format!("{token:?}").contains("supersecret"));
    }

    #[test]
    fn roles_are_ordered_and_parsed() {
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
        for role in [Role::Read, Role::Write, Role::Admin] {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().is_err());
    }
}
