//! Object storage through Apache OpenDAL. `BDJOBS_ASSETS` picks the backend:
//! - `fs:///abs/path` (or a plain path): a folder on disk (the default, `./var/assets`);
//! - `memory://`: in-process, for tests;
//! - `s3://BUCKET?endpoint=URL&region=REGION`: S3 or an S3-compatible server, with
//!   credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.

use opendal::{services, ErrorKind, Operator};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid BDJOBS_ASSETS {0:?}: {1}")]
    Config(String, String),
    #[error("object storage: {0}")]
    Backend(#[from] opendal::Error),
}

impl StorageError {
    pub fn is_retryable(&self) -> bool {
        match self {
            StorageError::Config(..) => false,
            StorageError::Backend(e) => e.is_temporary() || e.kind() == ErrorKind::Unexpected,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::Backend(e) if e.kind() == ErrorKind::NotFound)
    }
}

/// The default location: `./var/assets` under the working directory.
pub fn default_location() -> String {
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    format!("fs://{}", cwd.join("var").join("assets").display())
}

/// Builds the operator `location` names.
pub fn operator(location: &str) -> Result<Operator, StorageError> {
    let bad = |why: &str| StorageError::Config(location.to_owned(), why.to_owned());
    if location == "memory://" || location == "memory" {
        return Ok(Operator::new(services::Memory::default())?);
    }
    if let Some(rest) = location.strip_prefix("s3://") {
        let url = url::Url::parse(&format!("s3://{rest}")).map_err(|e| bad(&e.to_string()))?;
        let bucket = url.host_str().ok_or_else(|| bad("no bucket"))?;
        let mut b = services::S3::default()
            .bucket(bucket)
            .root(if url.path().is_empty() {
                "/"
            } else {
                url.path()
            })
            .disable_config_load()
            .disable_ec2_metadata();
        for (k, v) in url.query_pairs() {
            b = match k.as_ref() {
                "endpoint" => b.endpoint(&v),
                "region" => b.region(&v),
                other => return Err(bad(&format!("unknown parameter {other:?}"))),
            };
        }
        if let (Ok(id), Ok(secret)) = (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) {
            b = b.access_key_id(&id).secret_access_key(&secret);
        }
        return Ok(Operator::new(b)?);
    }
    let path = location.strip_prefix("fs://").unwrap_or(location);
    if path.contains("://") {
        return Err(bad(
            "expected fs:///abs/path, memory:// or s3://BUCKET?endpoint=...&region=...",
        ));
    }
    let abs = if Path::new(path).is_absolute() {
        path.into()
    } else {
        std::env::current_dir()
            .map_err(|e| bad(&e.to_string()))?
            .join(path)
    };
    std::fs::create_dir_all(&abs)
        .map_err(|e| bad(&format!("cannot create {}: {e}", abs.display())))?;
    Ok(Operator::new(
        services::Fs::default().root(&abs.to_string_lossy()),
    )?)
}

pub async fn put(op: &Operator, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
    op.write(key, bytes).await?;
    Ok(())
}

pub async fn get(op: &Operator, key: &str) -> Result<Vec<u8>, StorageError> {
    Ok(op.read(key).await?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_backend_stores_and_returns_bytes() {
        let op = operator("memory://").unwrap();
        put(&op, "tenants/a/jobs/j/x", b"hello".to_vec())
            .await
            .unwrap();
        assert_eq!(get(&op, "tenants/a/jobs/j/x").await.unwrap(), b"hello");
        assert!(get(&op, "missing").await.unwrap_err().is_not_found());
    }

    #[tokio::test]
    async fn the_filesystem_backend_writes_under_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let op = operator(&format!("fs://{}", dir.path().display())).unwrap();
        put(&op, "tenants/a/x", b"1".to_vec()).await.unwrap();
        assert!(dir.path().join("tenants/a/x").exists());
    }

    #[test]
    fn an_unknown_scheme_is_a_clear_error() {
        let e = operator("ftp://x").unwrap_err().to_string();
        assert!(e.contains("expected fs://"), "{e}");
    }
}
