//! The metrics HTTP listener: `GET /metrics` (the Prometheus text exposition) and `GET
//! /healthz` on a loopback address, served by hyper on one thread running a current-thread
//! tokio runtime.
//!
//! Slow or hostile clients cannot starve a scrape: at most [`MAX_CONNECTIONS`] connections are
//! served at once (more wait in the listen backlog), a request head longer than
//! [`MAX_HEAD_BYTES`] is answered 431 and cut, the head must arrive within [`HEAD_TIMEOUT`],
//! and a connection (one request: no keep-alive) lasts at most [`CONNECTION_TIMEOUT`].

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::Registry;

/// Connections served at once; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// Largest request head (request line and headers) read, in bytes (hyper's minimum).
pub const MAX_HEAD_BYTES: usize = 8192;

/// Time a client has to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Time a connection may last in all: its request and the response.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The content type of the text exposition format 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds the metrics listener; only loopback addresses are allowed.
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        bail!("the metrics listener must be on a loopback address, not {addr}");
    }
    TcpListener::bind(addr).with_context(|| format!("binding the metrics listener on {addr}"))
}

/// Serves `/metrics` and `/healthz` on `listener` from a background thread.
pub fn serve(listener: TcpListener, registry: Arc<Registry>) -> anyhow::Result<()> {
    listener
        .set_nonblocking(true)
        .context("making the metrics listener non-blocking")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the metrics runtime")?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => accept_loop(listener, registry).await,
                    Err(e) => tracing::error!("metrics listener: {e}"),
                }
            })
        })
        .context("starting the metrics thread")?;
    Ok(())
}

async fn accept_loop(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // The semaphore is never closed.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: let connections finish before retrying.
                tracing::warn!("accept on the metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let response = respond(&registry, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("metrics connection: {e}"),
                Err(_) => tracing::debug!(
                    "metrics connection cut after {}s",
                    CONNECTION_TIMEOUT.as_secs()
                ),
            }
        });
    }
}

/// The answer to one request.
fn respond(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz") {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n",
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/healthz" {
        return if registry.dataplane().serving() {
            plain(StatusCode::OK, "ok\n")
        } else {
            plain(StatusCode::SERVICE_UNAVAILABLE, "dataplane not running\n")
        };
    }
    let mut r = Response::new(Full::new(Bytes::from(registry.metrics_text())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
