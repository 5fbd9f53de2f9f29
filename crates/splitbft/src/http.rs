//! A minimal HTTP/1.1 responder for `/metrics` and `/healthz` (operator endpoints only).
//!
//! Scrapers send one small `GET` per connection, so this reads one bounded request head,
//! answers it and closes: no keep-alive, no bodies, no chunking. Anything else (an
//! oversize or slow head, another method, an unknown path) gets an error status or is
//! dropped, is counted, and the listener keeps serving.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head read. A scraper's `GET /metrics` with headers is a few hundred
/// bytes; 8 KiB leaves room for proxies' headers and bounds memory per connection.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// A request head must arrive within this time; slow clients are cut off.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's accept queue. Scrapers are few.
pub const MAX_CONNECTIONS: usize = 64;

/// What the endpoint serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`.
    Metrics,
    /// `GET /healthz`.
    Health,
}

/// One answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type` header.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

/// Content type of OpenMetrics text (what `prometheus_client::encoding::text` writes).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Requests refused by reason, for the endpoint's own health.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Heads too large, too slow, or not HTTP.
    pub bad_requests: AtomicU64,
    /// Paths other than the two served.
    pub not_found: AtomicU64,
}

/// Serves `handler` on `listener` until the task is dropped.
pub async fn serve<F, Fut>(listener: TcpListener, handler: F, counters: Arc<HttpCounters>)
where
    F: Fn(Route) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let handler = handler.clone();
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let _permit = permit;
            answer(stream, handler, &counters).await;
        });
    }
}

async fn answer<F, Fut>(mut stream: TcpStream, handler: F, counters: &HttpCounters)
where
    F: Fn(Route) -> Fut,
    Fut: Future<Output = Response>,
{
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        _ => {
            counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let response = match parse_route(&head) {
        Ok(route) => handler(route).await,
        Err(status) => {
            let counter = if status == 404 { &counters.not_found } else { &counters.bad_requests };
            counter.fetch_add(1, Ordering::Relaxed);
            Response { status, content_type: "text/plain; charset=utf-8", body: format!("{}\n", reason(status)) }
        }
    };
    let header = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    // The peer may already be gone; nothing to do about it.
    let _ = stream.write_all(header.as_bytes()).await;
    let _ = stream.write_all(response.body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads up to the blank line ending the head; `None` if it is too long or the peer quits.
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || head.len() + n > MAX_REQUEST_HEAD_BYTES {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Some(head)
}

/// The route of a request head, or the status to refuse it with.
pub fn parse_route(head: &[u8]) -> Result<Route, u16> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(400);
    };
    if !version.starts_with(b"HTTP/1.") {
        return Err(400);
    }
    if method != b"GET" {
        return Err(405);
    }
    // Query strings (e.g. a scraper's `?format=`) are ignored.
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    match path {
        b"/metrics" => Ok(Route::Metrics),
        b"/healthz" => Ok(Route::Health),
        _ => Err(404),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_refusals() {
        assert_eq!(parse_route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(Route::Metrics));
        assert_eq!(parse_route(b"GET /healthz?verbose=1 HTTP/1.0\r\n\r\n"), Ok(Route::Health));
        assert_eq!(parse_route(b"POST /metrics HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(parse_route(b"GET /other HTTP/1.1\r\n\r\n"), Err(404));
        assert_eq!(parse_route(b"GET /metrics SPDY\r\n\r\n"), Err(400));
        assert_eq!(parse_route(b"\r\n\r\n"), Err(400));
    }
}
