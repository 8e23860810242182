//! Object storage through Apache OpenDAL. `BDJOBS_ASSETS` picks the backend:
//! - `fs:///abs/path` (or a plain path): a folder on disk (the default, `./var/assets`);
//! - `memory://`: in-process, for tests;
//! - `s3://BUCKET?endpoint=URL&region=REGION`: S3 or an S3-compatible server. Credentials are
//!   passed in ([`operator_with`]; the binary takes them from its configuration) or read from
//!   `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` ([`operator`]); never from the location, which
//!   ends up in logs and error messages.

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
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::Backend(e) if e.kind() == ErrorKind::NotFound)
    }
}

impl crate::adapters::Retryable for StorageError {
    fn is_retryable(&self) -> bool {
        match self {
            StorageError::Config(..) => false,
            StorageError::Backend(e) => e.is_temporary() || e.kind() == ErrorKind::Unexpected,
        }
    }
}

/// The default location: `./var/assets` under the working directory.
pub fn default_location() -> String {
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    format!("fs://{}", cwd.join("var").join("assets").display())
}

/// An access key for an S3 backend. `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .finish()
    }
}

impl S3Credentials {
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, when both are set.
    pub fn from_env() -> Option<Self> {
        match (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Ok(access_key_id), Ok(secret_access_key)) => Some(Self {
                access_key_id,
                secret_access_key,
            }),
            _ => None,
        }
    }
}

/// Builds the operator `location` names, with S3 credentials from the environment.
pub fn operator(location: &str) -> Result<Operator, StorageError> {
    operator_with(location, S3Credentials::from_env().as_ref())
}

/// Builds the operator `location` names. `credentials` sign S3 requests (without them requests
/// are anonymous); the other backends ignore them.
pub fn operator_with(
    location: &str,
    credentials: Option<&S3Credentials>,
) -> Result<Operator, StorageError> {
    let bad = |why: &str| StorageError::Config(location.to_owned(), why.to_owned());
    if location == "memory://" || location == "memory" {
        return Ok(Operator::new(services::Memory::default())?);
    }
    if let Some(rest) = location.strip_prefix("s3://") {
        // Without the `auto-register-services` feature nothing installs OpenDAL's HTTP transport
        // for us, and every S3 request would fail with "default HTTP transport is not installed".
        // Idempotent: the first call wins.
        opendal::install_default();
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
        if let Some(c) = credentials {
            b = b
                .access_key_id(&c.access_key_id)
                .secret_access_key(&c.secret_access_key);
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

pub async fn put(
    op: &Operator,
    key: &str,
    bytes: impl Into<opendal::Buffer>,
) -> Result<(), StorageError> {
    op.write(key, bytes.into()).await?;
    Ok(())
}

/// Bytes `range` of an object as a stream, read a chunk at a time: a download never holds the
/// whole object in memory.
pub async fn read_range(
    op: &Operator,
    key: &str,
    range: std::ops::Range<u64>,
) -> Result<opendal::FuturesBytesStream, StorageError> {
    Ok(op.reader(key).await?.into_bytes_stream(range).await?)
}

pub async fn get(op: &Operator, key: &str) -> Result<Vec<u8>, StorageError> {
    Ok(op.read(key).await?.to_vec())
}

/// Bytes `range` of an object, whole in memory (an asset's slice of its job's object).
pub async fn get_range(
    op: &Operator,
    key: &str,
    range: std::ops::Range<u64>,
) -> Result<Vec<u8>, StorageError> {
    Ok(op.read_with(key).range(range).await?.to_vec())
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
    async fn a_range_of_an_object_is_exactly_those_bytes() {
        let op = operator("memory://").unwrap();
        put(&op, "k", b"[json]\ncsv,rows\r\n".to_vec())
            .await
            .unwrap();
        assert_eq!(get_range(&op, "k", 7..17).await.unwrap(), b"csv,rows\r\n");
        assert_eq!(get_range(&op, "k", 0..7).await.unwrap(), b"[json]\n");
    }

    #[tokio::test]
    async fn the_filesystem_backend_writes_under_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let op = operator(&format!("fs://{}", dir.path().display())).unwrap();
        put(&op, "tenants/a/x", b"1".to_vec()).await.unwrap();
        assert!(dir.path().join("tenants/a/x").exists());
    }

    #[test]
    fn credentials_never_show_their_secret_when_debug_printed() {
        let c = S3Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "very-secret".into(),
        };
        let shown = format!("{c:?}");
        assert!(
            shown.contains("AKID") && !shown.contains("very-secret"),
            "{shown}"
        );
    }

    #[test]
    fn an_s3_location_with_an_unknown_parameter_is_refused() {
        let e = operator_with("s3://b?endpoint=http://127.0.0.1:1&secret=x", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown parameter \"secret\""), "{e}");
    }

    #[test]
    fn an_unknown_scheme_is_a_clear_error() {
        let e = operator("ftp://x").unwrap_err().to_string();
        assert!(e.contains("expected fs://"), "{e}");
    }
}
