//! `splitbft status`: every replica's view, progress and health in one table, read from
//! the `/healthz` endpoints the replicas serve (see [`crate::metrics`]).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `/healthz` answer is a few hundred bytes; anything longer is not one.
const MAX_HEALTH_BYTES: usize = 16 * 1024;
/// Each replica must answer within this time, or it is reported unreachable.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// What a replica's `/healthz` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Every compartment answered.
    pub healthy: bool,
    /// Replica id it reports.
    pub replica: u32,
    /// Current view.
    pub view: u64,
    /// Last sequence number executed.
    pub last_executed: u64,
    /// Last stable checkpoint.
    pub stable_checkpoint: u64,
    /// A state transfer is under way, or a compartment is behind the recovery fence.
    pub recovering: bool,
}

/// One row of the status table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Replica id from cluster.toml.
    pub id: u32,
    /// The metrics address scraped.
    pub metrics: Option<SocketAddr>,
    /// Its answer, if it gave one.
    #[serde(flatten)]
    pub health: Option<Health>,
    /// Why there is no answer.
    pub error: Option<String>,
}

/// Reads `/healthz` at `addr`.
pub async fn fetch_health(addr: SocketAddr) -> Result<Health, String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: splitbft\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        (&mut stream).take(MAX_HEALTH_BYTES as u64 + 1).read_to_end(&mut body).await.map_err(|e| e.to_string())?;
        if body.len() > MAX_HEALTH_BYTES {
            return Err("answer too long".to_owned());
        }
        let text = String::from_utf8_lossy(&body);
        let (head, json) = text.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.1 503") {
            return Err(format!("unexpected answer: {}", head.lines().next().unwrap_or_default()));
        }
        serde_json::from_str(json.trim()).map_err(|e| format!("bad /healthz body: {e}"))
    };
    tokio::time::timeout(STATUS_TIMEOUT, fetch).await.map_err(|_| "timed out".to_owned())?
}

/// Scrapes every replica at once.
pub async fn collect(targets: &[(u32, Option<SocketAddr>)]) -> Vec<Row> {
    let rows = targets.iter().map(|&(id, metrics)| async move {
        match metrics {
            None => Row { id, metrics, health: None, error: Some("no metrics address in cluster.toml".into()) },
            Some(addr) => match fetch_health(addr).await {
                Ok(health) => Row { id, metrics, health: Some(health), error: None },
                Err(error) => Row { id, metrics, health: None, error: Some(error) },
            },
        }
    });
    futures_util::future::join_all(rows).await
}

/// The table `status` prints.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<8} {:<22} {:>6} {:>14} {:>17} {:<10}\n",
        "replica", "metrics", "view", "last executed", "stable checkpoint", "health"
    );
    for row in rows {
        let addr = row.metrics.map_or("-".to_owned(), |a| a.to_string());
        match (&row.health, &row.error) {
            (Some(h), _) => {
                let state = match (h.healthy, h.recovering) {
                    (true, false) => "ok",
                    (true, true) => "recovering",
                    (false, _) => "unhealthy",
                };
                out.push_str(&format!(
                    "{:<8} {:<22} {:>6} {:>14} {:>17} {:<10}\n",
                    row.id, addr, h.view, h.last_executed, h.stable_checkpoint, state
                ));
            }
            (None, error) => out.push_str(&format!(
                "{:<8} {:<22} {:>6} {:>14} {:>17} down: {}\n",
                row.id,
                addr,
                "-",
                "-",
                "-",
                error.as_deref().unwrap_or("unknown")
            )),
        }
    }
    out
}
