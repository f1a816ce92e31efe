//! The metrics HTTP listener: `GET /metrics` (the Prometheus text exposition), `GET /healthz`
//! (liveness: the dataplane serves) and `GET /readyz` (readiness: the dataplane serves and node
//! mode is in place: its node source connected, the routes of the latest node list in the
//! kernel, the masquerade rules written; one line per check) on the address `--metrics-addr`
//! names (loopback by default; anything else is unauthenticated), served by
//! hyper on one thread running a current-thread tokio runtime.
//!
//! Slow or hostile clients cannot starve a scrape: at most [`MAX_CONNECTIONS`] connections are
//! served at once (more wait in the listen backlog), a request head longer than
//! [`MAX_HEAD_BYTES`] is answered 431 and cut, the head must arrive within [`HEAD_TIMEOUT`],
//! and a connection (one request: no keep-alive) lasts at most [`CONNECTION_TIMEOUT`].

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
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

/// Binds the metrics listener (the caller warns about a non-loopback address).
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
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
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
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
    if path == "/readyz" {
        let serving = registry.dataplane().serving();
        let (ready, text) = readiness(serving, &crate::node::readiness());
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return text_response(status, text);
    }
    let mut r = Response::new(Full::new(Bytes::from(registry.metrics_text())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
    r
}

/// Whether netstackd is ready, and the body saying why: one `ok`/`FAIL` line per check.
fn readiness(serving: bool, node: &[crate::node::Check]) -> (bool, String) {
    let mut ready = serving;
    let mut text = format!(
        "{} dataplane: {}\n",
        if serving { "ok  " } else { "FAIL" },
        if serving { "serving" } else { "not running" }
    );
    for c in node {
        ready &= c.ok;
        text += &format!(
            "{} {}: {}\n",
            if c.ok { "ok  " } else { "FAIL" },
            c.what,
            c.detail
        );
    }
    (ready, text)
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    text_response(status, text.to_owned())
}

fn text_response(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Check;

    #[test]
    fn ready_needs_the_dataplane_and_every_node_check() {
        let synced = Check {
            what: "routes",
            ok: true,
            detail: "synced",
        };
        let watch_lost = Check {
            what: "node source",
            ok: false,
            detail: "Kubernetes watch not connected",
        };
        assert_eq!(
            readiness(true, std::slice::from_ref(&synced)),
            (
                true,
                "ok   dataplane: serving\nok   routes: synced\n".to_owned()
            )
        );
        let (ready, text) = readiness(true, &[watch_lost, synced.clone()]);
        assert!(!ready);
        assert!(
            text.contains("FAIL node source: Kubernetes watch not connected\n"),
            "{text}"
        );
        assert!(!readiness(false, &[synced]).0, "no dataplane, not ready");
        assert!(
            readiness(true, &[]).0,
            "no node checks: the dataplane decides"
        );
    }
}
