//! `GET /bd/jobs/{id}/result` of a completed job at fixed concurrency, against a static handler
//! merged into the same router (only in this process) that returns the very same bytes.

use crate::client;
use crate::env::{self, Env};
use crate::fixtures;
use crate::report::{ms, num, quantile, Report, Row};
use crate::Scale;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::get;
use bdjobs::adapters::broker::Publisher;
use bdjobs::adapters::storage;
use bdjobs::api::auth::Caller;
use bdjobs::api::{self, AppState};
use std::future::IntoFuture;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const CONCURRENCY: usize = 32;

pub async fn run(scale: Scale, report: &mut Report) -> anyhow::Result<()> {
    let requests = scale.n(20_000, 2_000);
    let env = Env::new("result").await?;
    let dns = env::stub_dns().await?;
    let recorded = fixtures::record_jobs(&env.pool, &fixtures::sources(&dns)?, 1).await?;
    let job = &recorded[0];
    let store = storage::operator(&env.config.assets_location())?;
    for e in &job.events {
        bdjobs::read_model::apply(&env.pool, &store, e).await?;
    }
    let state = AppState::new(
        env.pool.clone(),
        store,
        Arc::new(Publisher::new(
            &env.config.amqp_url,
            "bench-api",
            env.topology(),
        )),
        &env.config.api,
    );
    let body: Arc<OnceLock<Bytes>> = Arc::default();
    // Also the same bytes behind the API's bearer authentication: splits the cost of /result
    // into authenticating and loading the view.
    let authed = axum::Router::new()
        .route(
            "/static_auth",
            get({
                let body = body.clone();
                move |_: Caller| {
                    let b = body.get().cloned().unwrap_or_default();
                    async move { ([(header::CONTENT_TYPE, "application/json")], b) }
                }
            }),
        )
        .with_state(state.clone());
    let app = api::router(state)
        .merge(authed)
        .merge(axum::Router::new().route(
            "/static",
            get({
                let body = body.clone();
                move || {
                    let b = body.get().cloned().unwrap_or_default();
                    async move { ([(header::CONTENT_TYPE, "application/json")], b) }
                }
            }),
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(env.shutdown.child_token().cancelled_owned())
            .into_future(),
    );
    let key = env.key().await?;
    let http = client::http();
    let result_url = format!("{base}/api/v1/bd/jobs/{}/result", job.job.job_id);
    let static_url = format!("{base}/static");
    let auth_url = format!("{base}/static_auth");
    let resp = http.get(&result_url).bearer_auth(&key).send().await?;
    anyhow::ensure!(resp.status() == 200, "GET result: {}", resp.status());
    let bytes = resp.bytes().await?;
    let size = bytes.len();
    let _ = body.set(bytes);

    // Warm up both, then alternate so that drift hits both alike.
    client::hammer(&http, &result_url, Some(&key), 500, CONCURRENCY).await?;
    client::hammer(&http, &static_url, None, 500, CONCURRENCY).await?;
    let (mut res_lat, mut sta_lat) = (Vec::new(), Vec::new());
    let (mut res_wall, mut sta_wall, mut auth_wall) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..2 {
        let r = client::hammer(&http, &result_url, Some(&key), requests / 2, CONCURRENCY).await?;
        res_wall += r.wall;
        res_lat.extend(r.latencies);
        let s = client::hammer(&http, &static_url, None, requests / 2, CONCURRENCY).await?;
        anyhow::ensure!(
            s.bytes == r.bytes,
            "static and result bodies differ in size"
        );
        sta_wall += s.wall;
        sta_lat.extend(s.latencies);
        let a = client::hammer(&http, &auth_url, Some(&key), requests / 2, CONCURRENCY).await?;
        auth_wall += a.wall;
    }
    env.shutdown.cancel();
    server.await??;

    let n = (requests / 2 * 2) as f64;
    let (res_rps, sta_rps) = (n / res_wall.as_secs_f64(), n / sta_wall.as_secs_f64());
    let auth_rps = n / auth_wall.as_secs_f64();
    let (res_p99, sta_p99) = (quantile(&mut res_lat, 0.99), quantile(&mut sta_lat, 0.99));
    report.add(
        Row::new(
            "result",
            format!("GET /result req/s, {CONCURRENCY} connections, {size} B body"),
            num(res_rps),
        )
        .baseline(
            format!("static handler: {} req/s", num(sta_rps)),
            res_rps / sta_rps,
        )
        .target("≥ 0.50× static", res_rps / sta_rps >= 0.5),
    );
    report.add(
        Row::new("result", "GET /result p50 / p99", {
            let p50 = quantile(&mut res_lat, 0.5);
            format!("{} / {}", ms(p50), ms(res_p99))
        })
        .baseline(
            format!(
                "static p50 / p99: {} / {}",
                ms(quantile(&mut sta_lat, 0.5)),
                ms(sta_p99)
            ),
            res_p99.as_secs_f64() / sta_p99.as_secs_f64(),
        ),
    );
    report.add(
        Row::new(
            "result",
            "static bytes behind bearer auth (the API's `Caller`), req/s",
            num(auth_rps),
        )
        .baseline(
            format!("static handler: {} req/s", num(sta_rps)),
            auth_rps / sta_rps,
        ),
    );
    Ok(())
}
