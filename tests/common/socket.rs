//! Calling the agent's socket: GET, POST, status, and waiting for a token or a failure.

use std::path::Path;
use std::time::Duration;

use asset_agent::client;

/// GETs `path` over the socket.
pub async fn get(socket: &Path, path: &str) -> client::Response {
    client::get_json(socket, path).await.unwrap()
}

/// POSTs `body` (JSON) to `path` over the socket.
pub async fn post(socket: &Path, path: &str, body: impl Into<bytes::Bytes>) -> client::Response {
    client::post_json(socket, path, body).await.unwrap()
}

/// An answer's body as JSON.
pub fn body(r: &client::Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap()
}

/// `GET /v1/status` as JSON.
pub async fn status(socket: &Path) -> serde_json::Value {
    body(&get(socket, "/v1/status").await)
}

/// Polls `/v1/token` until it answers 200 (bounded: 20 s of real time).
pub async fn wait_for_token(socket: &Path) -> serde_json::Value {
    for _ in 0..200 {
        if let Ok(r) = client::get_json(socket, "/v1/token").await
            && r.status == 200
        {
            return serde_json::from_slice(&r.body).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no token within 20 s");
}

/// Polls `/v1/status` until the agent reports a failed attempt (bounded: 10 s).
pub async fn wait_for_failure(socket: &Path) -> serde_json::Value {
    for _ in 0..200 {
        let status = status(socket).await;
        if status["consecutive_failures"].as_u64().unwrap_or(0) >= 1 {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no failed attempt within 10 s");
}
