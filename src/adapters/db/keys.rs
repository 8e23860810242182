//! API keys: `dc_` followed by 192 random bits, shown once; only a SHA-256 of the key is stored.

use super::DbError;
use crate::domain::ids::TenantId;
use deadpool_postgres::Pool;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const KEY_PREFIX: &str = "dc_";

pub struct NewKey {
    pub key_id: Uuid,
    /// The secret itself. Never stored; print it once.
    pub secret: String,
}

pub fn hash_key(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

pub fn generate_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

pub async fn create_key(pool: &Pool, tenant: &TenantId) -> Result<NewKey, DbError> {
    let secret = generate_secret();
    let key_id = Uuid::now_v7();
    // The first characters help a person tell keys apart in `keys list` without revealing them.
    let prefix: String = secret.chars().take(KEY_PREFIX.len() + 6).collect();
    pool.get()
        .await?
        .execute(
            "INSERT INTO api_keys (key_id, tenant, prefix, key_hash) VALUES ($1, $2, $3, $4)",
            &[&key_id, &tenant.as_str(), &prefix, &hash_key(&secret)],
        )
        .await?;
    Ok(NewKey { key_id, secret })
}

/// A key as `keys list` shows it: everything but the secret (which is not stored anyway).
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub key_id: Uuid,
    pub tenant: String,
    pub prefix: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The tenant's keys, oldest first.
/// A row of `SELECT key_id, tenant, prefix, created_at, last_used_at, revoked_at`.
fn key_info(r: &tokio_postgres::Row) -> KeyInfo {
    KeyInfo {
        key_id: r.get(0),
        tenant: r.get(1),
        prefix: r.get(2),
        created_at: r.get(3),
        last_used_at: r.get(4),
        revoked_at: r.get(5),
    }
}

pub async fn list_keys(pool: &Pool, tenant: &TenantId) -> Result<Vec<KeyInfo>, DbError> {
    let client = pool.get().await?;
    Ok(client
        .query(
            "SELECT key_id, tenant, prefix, created_at, last_used_at, revoked_at FROM api_keys
             WHERE tenant = $1 ORDER BY created_at, key_id",
            &[&tenant.as_str()],
        )
        .await?
        .into_iter()
        .map(|r| key_info(&r))
        .collect())
}

pub enum Revoked {
    Now(KeyInfo),
    Already(KeyInfo),
    NoSuchKey,
}

/// Revokes a key: API processes refuse it once their key cache lets it go
/// (`BDJOBS_KEY_CACHE_SECS`). Revoking twice keeps the first time.
pub async fn revoke_key(pool: &Pool, key_id: Uuid) -> Result<Revoked, DbError> {
    let client = pool.get().await?;
    let updated = client
        .execute(
            "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL",
            &[&key_id],
        )
        .await?;
    let row = client
        .query_opt(
            "SELECT key_id, tenant, prefix, created_at, last_used_at, revoked_at FROM api_keys
             WHERE key_id = $1",
            &[&key_id],
        )
        .await?;
    let Some(r) = row else {
        return Ok(Revoked::NoSuchKey);
    };
    let info = key_info(&r);
    Ok(if updated == 1 {
        Revoked::Now(info)
    } else {
        Revoked::Already(info)
    })
}

/// An authenticated key: its id (what rate limits count by) and its tenant.
#[derive(Debug, Clone)]
pub struct KeyOwner {
    pub key_id: Uuid,
    pub tenant: TenantId,
}

/// The owner of a live key. The lookup is by hash, so the secret is never compared byte by
/// byte in a way that leaks timing; the stored hash is compared again in constant time.
pub async fn authenticate(pool: &Pool, secret: &str) -> Result<Option<KeyOwner>, DbError> {
    authenticate_hash(pool, &hash_key(secret)).await
}

/// [`authenticate`] for a key already hashed (the API's key cache is keyed by the hash, so the
/// secret itself is never held longer than the request).
pub async fn authenticate_hash(pool: &Pool, hash: &[u8]) -> Result<Option<KeyOwner>, DbError> {
    use subtle::ConstantTimeEq;
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT key_id, tenant, key_hash FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&hash]).await? else {
        return Ok(None);
    };
    let stored: Vec<u8> = row.get(2);
    if !bool::from(stored.ct_eq(hash)) {
        return Ok(None);
    }
    let key_id: Uuid = row.get(0);
    // Once a minute at most, so that a busy key does not turn every read into a write.
    let touch = client
        .prepare_cached(
            "UPDATE api_keys SET last_used_at = now()
             WHERE key_id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        )
        .await?;
    client.execute(&touch, &[&key_id]).await?;
    let tenant: String = row.get(1);
    TenantId::parse(&tenant)
        .map(|tenant| Some(KeyOwner { key_id, tenant }))
        .map_err(|e| DbError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_has_the_prefix_and_192_bits_of_randomness() {
        let s = generate_secret();
        assert!(s.starts_with("dc_"));
        assert_eq!(s.len(), 3 + 48);
        assert_ne!(s, generate_secret());
    }
}
