//! Asset download: a 16 MiB object written through the storage adapter and indexed with
//! `db::jobs::upsert_asset`, downloaded through `GET /bd/jobs/{id}/assets/{asset}`, against
//! reading the same object straight from OpenDAL.

use crate::client;
use crate::env::Env;
use crate::report::{Report, Row};
use crate::Scale;
use bdjobs::adapters::broker::Publisher;
use bdjobs::adapters::{db, storage};
use bdjobs::api::{self, AppState};
use bdjobs::domain::ids::{assets_storage_key, AssetId, JobId};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SIZE: usize = 16 * 1024 * 1024;

/// Bytes that do not compress, from a fixed seed (xorshift).
fn payload() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(SIZE);
    while out.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(SIZE);
    out
}

pub async fn run(scale: Scale, report: &mut Report) -> anyhow::Result<()> {
    let rounds = scale.n(16, 4);
    let env = Env::new("download").await?;
    let store = storage::operator(&env.config.assets_location())?;
    let job = JobId::new();
    let asset = AssetId::parse("bench_blob")?;
    let key = assets_storage_key(&env.tenant(), job);
    let data = payload();
    let row = db::jobs::AssetRow {
        storage_key: key.clone(),
        byte_offset: 0,
        mime_type: "application/octet-stream".to_owned(),
        size_bytes: SIZE as i64,
        sha256: hex::encode(Sha256::digest(&data)),
    };
    // The same bytes from memory through the same server: what HTTP on loopback costs by itself.
    let in_memory = axum::body::Bytes::from(data.clone());
    storage::put(&store, &key, data).await?;
    db::jobs::upsert_asset(&env.pool.get().await?, &env.tenant(), job, &asset, &row).await?;

    let state = AppState::new(
        env.pool.clone(),
        store.clone(),
        Arc::new(Publisher::new(
            &env.config.amqp_url,
            "bench-api",
            env.topology(),
        )),
        &env.config.api,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let url = format!("{base}/api/v1/bd/jobs/{job}/assets/{asset}");
    let static_url = format!("{base}/static");
    let app = api::router(state).merge(axum::Router::new().route(
        "/static",
        axum::routing::get(move || {
            let b = in_memory.clone();
            async move { b }
        }),
    ));
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(env.shutdown.child_token().cancelled_owned())
            .into_future(),
    );
    let secret = env.key().await?;
    let http = client::http();

    let via_http = |url: &str, auth: bool| {
        let req = http.get(url);
        let req = if auth { req.bearer_auth(&secret) } else { req };
        async move {
            let t = Instant::now();
            let resp = req.send().await?;
            anyhow::ensure!(resp.status() == 200, "GET asset: {}", resp.status());
            let mut stream = resp.bytes_stream();
            let mut n = 0;
            while let Some(chunk) = stream.next().await {
                n += chunk?.len();
            }
            anyhow::ensure!(n == SIZE, "downloaded {n} bytes");
            Ok::<_, anyhow::Error>(t.elapsed())
        }
    };
    let direct = || async {
        let t = Instant::now();
        let n = store.read(&key).await?.len();
        anyhow::ensure!(n == SIZE, "read {n} bytes");
        Ok::<_, anyhow::Error>(t.elapsed())
    };
    via_http(&url, true).await?;
    via_http(&static_url, false).await?;
    direct().await?;
    let (mut api_t, mut direct_t, mut static_t) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        api_t += via_http(&url, true).await?;
        direct_t += direct().await?;
        static_t += via_http(&static_url, false).await?;
    }
    env.shutdown.cancel();
    server.await??;

    let mib = (SIZE * rounds) as f64 / (1024.0 * 1024.0);
    let (api_rate, direct_rate) = (mib / api_t.as_secs_f64(), mib / direct_t.as_secs_f64());
    report.add(
        Row::new(
            "download",
            format!("16 MiB asset via GET /assets, MiB/s ({rounds} downloads)"),
            format!("{api_rate:.0}"),
        )
        .baseline(
            format!("OpenDAL read of the same object: {direct_rate:.0} MiB/s"),
            api_rate / direct_rate,
        )
        .target("≥ 0.80× direct", api_rate / direct_rate >= 0.8),
    );
    let static_rate = mib / static_t.as_secs_f64();
    report.add(
        Row::new(
            "download",
            "16 MiB asset via GET /assets, MiB/s",
            format!("{api_rate:.0}"),
        )
        .baseline(
            format!("the same 16 MiB from memory, same server: {static_rate:.0} MiB/s"),
            api_rate / static_rate,
        ),
    );
    Ok(())
}
