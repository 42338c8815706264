//! MQTT test kit: an embedded rumqttd broker whose auth handler verifies asset tokens
//! against the emulator's JWKS, an observer client, a TCP proxy that can stall or cut
//! connections, and a JSON POST over the agent's socket.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{mpsc, watch};
use wire::oauth::Jwks;

/// The observer's credentials (accepted without a JWT).
pub const OBSERVER: &str = "observer";
pub const OBSERVER_PASSWORD: &str = "observer-secret";

/// A CONNECT the broker accepted with an asset token.
#[derive(Debug, Clone)]
pub struct Login {
    /// Wall time of the CONNECT, in seconds (fractional).
    pub at: f64,
    pub client_id: String,
    pub username: String,
    pub jwt: String,
    pub exp: i64,
}

/// What the broker's auth handler saw.
#[derive(Debug, Default)]
pub struct AuthLog {
    pub accepted: Vec<Login>,
    /// Wall times of refused attempts.
    pub refused: Vec<f64>,
}

/// An embedded rumqttd on 127.0.0.1 (its own threads and runtimes; real time).
pub struct MqttBroker {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<AuthLog>>,
    /// Refuse every login (the handler answers false: rumqttd closes the connection).
    pub refuse_all: Arc<AtomicBool>,
}

/// Real wall time, to compare with the broker's log (a real broker on a real clock).
#[allow(clippy::disallowed_methods)]
pub fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Verifies `jwt` (RS256) against `jwks`, rejecting it once expired (no leeway).
fn verify(jwks: &Jwks, jwt: &str) -> Option<i64> {
    let header = jsonwebtoken::decode_header(jwt).ok()?;
    let kid = header.kid?;
    let key = jwks
        .keys
        .iter()
        .find(|k| k.kid.as_deref() == Some(kid.as_str()))?;
    let dk = jsonwebtoken::DecodingKey::from_rsa_components(key.n.as_deref()?, key.e.as_deref()?)
        .ok()?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.validate_aud = false;
    v.leeway = 0;
    let data = jsonwebtoken::decode::<serde_json::Value>(jwt, &dk, &v).ok()?;
    data.claims["exp"].as_i64()
}

impl MqttBroker {
    /// Starts a broker whose logins must carry a live asset token signed by a key in `jwks`
    /// (or be the observer).
    pub fn start(jwks: Jwks) -> Self {
        asset_agent::crypto::install();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = Arc::new(Mutex::new(AuthLog::default()));
        let refuse_all = Arc::new(AtomicBool::new(false));
        let mut server = ServerSettings {
            name: "v4-test".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 1,
            connections: ConnectionSettings {
                connection_timeout_ms: 5000,
                max_payload_size: 256 * 1024,
                max_inflight_count: 100,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let (l, r) = (log.clone(), refuse_all.clone());
        server.set_auth_handler(
            move |client_id: String, username: String, password: String| {
                let (log, refuse_all, jwks) = (l.clone(), r.clone(), jwks.clone());
                async move {
                    if username == OBSERVER {
                        return password == OBSERVER_PASSWORD;
                    }
                    let at = wall();
                    let exp = verify(&jwks, &password);
                    let mut log = log.lock().unwrap();
                    match exp {
                        Some(exp) if !refuse_all.load(Ordering::SeqCst) => {
                            log.accepted.push(Login {
                                at,
                                client_id,
                                username,
                                jwt: password,
                                exp,
                            });
                            true
                        }
                        _ => {
                            log.refused.push(at);
                            false
                        }
                    }
                }
            },
        );
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 100,
                max_outgoing_packet_count: 200,
                max_segment_size: 10 * 1024 * 1024,
                max_segment_count: 10,
                ..RouterConfig::default()
            },
            v4: Some(HashMap::from([("1".to_owned(), server)])),
            ..Config::default()
        };
        let mut broker = Broker::new(config);
        std::thread::spawn(move || {
            let _ = broker.start();
        });
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            // Before any runtime exists: a plain thread waits for the broker thread.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            addr,
            log,
            refuse_all,
        }
    }

    pub fn accepted(&self) -> Vec<Login> {
        self.log.lock().unwrap().accepted.clone()
    }

    pub fn refused(&self) -> Vec<f64> {
        self.log.lock().unwrap().refused.clone()
    }
}

/// A message the observer received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
}

/// A plain MQTT client subscribed to `filter`, for watching what the agent publishes and
/// sending it commands.
pub struct Observer {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    pub async fn start(addr: SocketAddr, filter: &str) -> Self {
        let mut o = MqttOptions::new(
            format!("observer-{}", rand_suffix()),
            addr.ip().to_string(),
            addr.port(),
        );
        o.set_credentials(OBSERVER, OBSERVER_PASSWORD);
        o.set_keep_alive(Duration::from_secs(10));
        o.set_max_packet_size(512 * 1024, 512 * 1024);
        let (client, mut eventloop) = AsyncClient::new(o, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Received {
                            topic: p.topic,
                            payload: p.payload,
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), ready_rx.wait_for(|r| *r))
            .await
            .expect("observer subscribed")
            .unwrap();
        Self { client, rx, task }
    }

    /// The next message on `topic` within `wait`.
    pub async fn next_on(&mut self, topic: &str, wait: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            if m.topic == topic {
                return Some(m);
            }
        }
    }

    /// Everything received so far.
    pub fn drain(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Ok(m) = self.rx.try_recv() {
            out.push(m);
        }
        out
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn rand_suffix() -> u64 {
    u64::from(std::process::id()) ^ (wall() * 1e6) as u64
}

/// How the proxy treats traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways.
    Pass,
    /// Keeps connections open but forwards nothing (a stalled network).
    Stall,
    /// Closes every connection, and new ones at once (a broker that is down).
    Down,
}

/// A TCP proxy in front of the broker that can stall or cut the agent's connection.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    upstream: watch::Sender<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let (upstream, upstream_rx) = watch::channel(upstream);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if *mode_rx.borrow() == Mode::Down {
                    drop(client);
                    continue;
                }
                let to = *upstream_rx.borrow();
                let Ok(server) = TcpStream::connect(to).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, mode_rx.clone()));
                tokio::spawn(pump(sr, cw, mode_rx.clone()));
            }
        });
        Self {
            addr,
            mode,
            upstream,
            task,
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Sends new connections to another broker (one that knows no session).
    pub fn set_upstream(&self, addr: SocketAddr) {
        self.upstream.send_replace(addr);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.mode.send_replace(Mode::Down);
    }
}

/// Copies `from` to `to` while the mode allows; ends (closing both) on `Down`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Wait while stalled; stop when down.
        let m = *mode.borrow_and_update();
        match m {
            Mode::Down => return,
            Mode::Stall => {
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Pass => {}
        }
        tokio::select! {
            r = mode.changed() => if r.is_err() { return },
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if to.write_all(&buf[..n]).await.is_err() { return },
            },
        }
    }
}

/// `POST path` with a JSON body over the agent's socket: (status, JSON body).
pub async fn post_json(
    socket: &Path,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    request(socket, hyper::Method::POST, path, body.to_string()).await
}

pub async fn request(
    socket: &Path,
    method: hyper::Method,
    path: &str,
    body: String,
) -> (u16, serde_json::Value) {
    let stream = UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    driver.abort();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// Polls `cond` every 50 ms until it holds or `wait` passes.
pub async fn eventually(wait: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}
