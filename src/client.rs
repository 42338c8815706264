//! A minimal client for the agent's socket, used by `asset-agent token`, `status` and the
//! tests: one HTTP/1.1 request per connection over the Unix socket.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the agent is not running: nothing listens on {} (start it with 'systemctl start asset-agent' or 'asset-agent run', or pass --socket)",
        path.display()
    )]
    NotRunning { path: PathBuf },
    #[error(
        "permission denied on {}: add your user to the socket's group (usually 'asset-agent': sudo usermod -aG asset-agent $USER, then log in again) or run as root",
        path.display()
    )]
    PermissionDenied { path: PathBuf },
    #[error("could not connect to {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the request to the agent failed")]
    Http(#[source] hyper::Error),
    #[error("could not build the request")]
    Request(#[source] hyper::http::Error),
}

/// A response from the agent.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// Sends `GET`/`POST` `path` to the agent at `socket` with `Accept: accept`.
///
/// # Errors
/// See [`Error`]; the connection errors say how to fix them.
pub async fn request(
    socket: &Path,
    method: hyper::Method,
    path: &str,
    accept: &str,
) -> Result<Response, Error> {
    let stream = UnixStream::connect(socket).await.map_err(|source| {
        let path = socket.to_owned();
        match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                Error::NotRunning { path }
            }
            io::ErrorKind::PermissionDenied => Error::PermissionDenied { path },
            _ => Error::Connect { path, source },
        }
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Error::Http)?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::ACCEPT, accept)
        .body(Empty::<Bytes>::new())
        .map_err(Error::Request)?;
    let resp = sender.send_request(req).await.map_err(Error::Http)?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(Error::Http)?
        .to_bytes();
    driver.abort();
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Convenience: `GET path` accepting JSON.
///
/// # Errors
/// As [`request`].
pub async fn get_json(socket: &Path, path: &str) -> Result<Response, Error> {
    request(socket, hyper::Method::GET, path, "application/json").await
}
