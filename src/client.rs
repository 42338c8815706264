//! A minimal client for the agent's socket, used by the client commands (`token`, `status`,
//! `watch`, `refresh`) and the tests: one HTTP/1.1 request per connection.

use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
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
        "permission denied on {}: {}",
        path.display(), join_hint(path)
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

/// A streamed response, read line by line (`GET /v1/token/watch`).
#[derive(Debug)]
pub struct Lines {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    body: Incoming,
    buf: BytesMut,
    driver: tokio::task::JoinHandle<()>,
}

/// Sends `method path` with `Accept: accept` and no body.
///
/// # Errors
/// See [`Error`]; the connection errors say how to fix them.
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    accept: &str,
) -> Result<Response, Error> {
    send(socket, method, path, accept, Bytes::new()).await
}

/// Convenience: `GET path` accepting JSON.
///
/// # Errors
/// As [`request`].
pub async fn get_json(socket: &Path, path: &str) -> Result<Response, Error> {
    request(socket, Method::GET, path, "application/json").await
}

/// `POST path` with a JSON body.
///
/// # Errors
/// As [`request`].
pub async fn post_json(
    socket: &Path,
    path: &str,
    body: impl Into<Bytes>,
) -> Result<Response, Error> {
    send(socket, Method::POST, path, "application/json", body.into()).await
}

/// Sends one request and reads the whole answer.
///
/// # Errors
/// As [`request`].
pub async fn send(
    socket: &Path,
    method: Method,
    path: &str,
    accept: &str,
    body: Bytes,
) -> Result<Response, Error> {
    let mut lines = open(socket, method, path, accept, body).await?;
    let body = std::mem::replace(&mut lines.buf, BytesMut::new());
    let rest = (&mut lines.body)
        .collect()
        .await
        .map_err(Error::Http)?
        .to_bytes();
    let mut all = body;
    all.extend_from_slice(&rest);
    Ok(Response {
        status: lines.status,
        headers: lines.headers.clone(),
        body: all.freeze(),
    })
}

/// Starts `GET /v1/token/watch`; read it with [`Lines::next_line`].
///
/// # Errors
/// As [`request`].
pub async fn watch(socket: &Path) -> Result<Lines, Error> {
    watch_path(socket, "/v1/token/watch").await
}

/// Starts a watch stream at `path` (a gateway child's `/v1/assets/NAME/token/watch`).
///
/// # Errors
/// As [`request`].
pub async fn watch_path(socket: &Path, path: &str) -> Result<Lines, Error> {
    open(
        socket,
        Method::GET,
        path,
        "application/x-ndjson",
        Bytes::new(),
    )
    .await
}

async fn open(
    socket: &Path,
    method: Method,
    path: &str,
    accept: &str,
    body: Bytes,
) -> Result<Lines, Error> {
    let stream = connect(socket).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Error::Http)?;
    let driver = tokio::spawn(crate::spawn::boxed(async move {
        let _ = conn.await;
    }));
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::ACCEPT, accept);
    if !body.is_empty() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(Full::new(body)).map_err(Error::Request)?;
    let resp = sender.send_request(req).await.map_err(Error::Http)?;
    let (parts, body) = resp.into_parts();
    Ok(Lines {
        status: parts.status,
        headers: parts.headers,
        body,
        buf: BytesMut::new(),
        driver,
    })
}

async fn connect(socket: &Path) -> Result<UnixStream, Error> {
    UnixStream::connect(socket).await.map_err(|source| {
        let path = socket.to_owned();
        match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                Error::NotRunning { path }
            }
            io::ErrorKind::PermissionDenied => Error::PermissionDenied { path },
            _ => Error::Connect { path, source },
        }
    })
}

// === impl Lines ===

impl Lines {
    /// The next line without its newline, or `None` when the stream ended.
    ///
    /// # Errors
    /// When the connection fails mid-stream.
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(i + 1);
                return Ok(Some(line.freeze().slice(..i)));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(Error::Http(e)),
                None if self.buf.is_empty() => return Ok(None),
                None => return Ok(Some(self.buf.split().freeze())),
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The group owning `socket`: its gid and, if `/etc/group` names it, its name.
pub fn socket_group(socket: &Path) -> Option<(u32, Option<String>)> {
    let gid = std::fs::metadata(socket).ok()?.gid();
    let name = std::fs::read_to_string("/etc/group")
        .ok()
        .and_then(|groups| {
            groups.lines().find_map(|line| {
                let mut f = line.split(':');
                let (name, _, id) = (f.next()?, f.next()?, f.next()?);
                (id.parse::<u32>().ok()? == gid).then(|| name.to_owned())
            })
        });
    Some((gid, name))
}

/// How to get access: join the socket's group (named when it can be found out).
pub fn join_hint(socket: &Path) -> String {
    let dir_group = socket.parent().and_then(socket_group);
    let group = socket_group(socket).or(dir_group);
    match group {
        Some((_, Some(name))) => format!(
            "join the group '{name}' that owns the socket (sudo usermod -aG {name} $USER, then log in again), or run as root"
        ),
        Some((gid, None)) => format!(
            "join group {gid}, which owns the socket (sudo usermod -aG <group> $USER, then log in again), or run as root"
        ),
        None => "join the socket's group (usually 'asset-agent': sudo usermod -aG asset-agent $USER, then log in again), or run as root".to_owned(),
    }
}
