//! Commands sent to the agent on `{topic_prefix}/{device_id}/agent/cmd`.
//!
//! A command is the bare word (`refresh`) or JSON `{"command": "refresh", "id": "..."}`;
//! the answer goes to `.../agent/response` as JSON carrying the same `id`. Anything that
//! is not a known command gets an error answer: a malformed message must never take the
//! uplink down.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Publish, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::stats::Stats;
use super::topics::Topics;

use crate::token::AssetToken;
use crate::token::refresher::Handle;
use wire::clock;

/// How long `refresh` waits for the new token before answering with a failure.
pub const REFRESH_WAIT: Duration = Duration::from_secs(30);
/// Longest `id` echoed back.
const MAX_ID: usize = 128;
/// Commands running at once; more are answered `busy`.
const MAX_RUNNING: usize = 4;

/// Runs commands off the session task (a `refresh` waits for the refresher, and the
/// session must keep polling meanwhile), a few at a time.
pub struct Dispatcher {
    topics: Arc<Topics>,
    stats: Arc<Stats>,
    running: TaskTracker,
    slots: Arc<Semaphore>,
}

/// A parsed command message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: Option<String>,
    pub name: String,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(alias = "cmd")]
    command: String,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

/// The answer published on the response topic.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Answer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub command: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

// === impl Dispatcher ===

impl Dispatcher {
    pub fn new(topics: Arc<Topics>, stats: Arc<Stats>) -> Self {
        Self {
            topics,
            stats,
            running: TaskTracker::new(),
            slots: Arc::new(Semaphore::new(MAX_RUNNING)),
        }
    }

    /// Handles a message the session received: runs it if it is a command, answers an
    /// error if it cannot be, ignores what is not on the command topic.
    pub fn dispatch(
        &self,
        p: &Publish,
        tokens: &Handle,
        client: &AsyncClient,
        cancel: &CancellationToken,
    ) {
        if p.topic != self.topics.cmd {
            tracing::debug!(topic = %p.topic, "ignored a message on an unexpected topic");
            return;
        }
        if p.retain {
            // A retained command would run again on every subscribe.
            tracing::warn!("ignored a retained message on the command topic");
            return;
        }
        Stats::bump(&self.stats.commands);
        let response = self.topics.response.clone();
        let cmd = match Command::parse(&p.payload) {
            Ok(cmd) => cmd,
            Err(reason) => {
                tracing::info!(reason, "answered an unreadable MQTT command with an error");
                self.answer_now(client, &unreadable(reason));
                return;
            }
        };
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.answer_now(client, &busy(&cmd));
            return;
        };
        let fut = execute(
            cmd,
            tokens.clone(),
            client.clone(),
            response,
            cancel.child_token(),
        );
        self.running.spawn(crate::spawn::boxed(async move {
            fut.await;
            drop(permit);
        }));
    }

    /// Queues `answer` without waiting; counted as dropped when the channel is full.
    fn answer_now(&self, client: &AsyncClient, answer: &Answer) {
        let topic = self.topics.response.clone();
        if client
            .try_publish(topic, QoS::AtLeastOnce, false, answer.to_vec())
            .is_err()
        {
            Stats::bump(&self.stats.dropped);
        }
    }

    /// Stops taking commands.
    pub fn close(&self) {
        self.running.close();
    }

    /// Resolves when the running commands have ended (they end on cancellation).
    pub async fn wait(&self) {
        self.running.wait().await;
    }
}

// === impl Command ===

impl Command {
    /// Reads a command message.
    ///
    /// # Errors
    /// Why a message is neither a command word nor the JSON form.
    pub fn parse(payload: &[u8]) -> Result<Self, &'static str> {
        let bad = |reason: &'static str| reason;
        let text = std::str::from_utf8(payload).map_err(|_| bad("not UTF-8"))?;
        let text = text.trim();
        if text.starts_with('{') {
            let wire: Wire = serde_json::from_str(text)
                .map_err(|_| bad("expected {\"command\": \"...\", \"id\": \"...\"}"))?;
            let id = wire.id.map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
            let id = id.map(|s| s.chars().take(MAX_ID).collect());
            return Ok(Self {
                id,
                name: wire.command,
            });
        }
        if text.is_empty() || text.len() > 64 || text.contains(char::is_whitespace) {
            return Err(bad("expected a command word or JSON"));
        }
        Ok(Self {
            id: None,
            name: text.to_owned(),
        })
    }
}

// === impl Answer ===

impl Answer {
    fn error(id: Option<String>, command: &str, error: &'static str, reason: String) -> Self {
        Self {
            id,
            command: command.to_owned(),
            ok: false,
            expires_at: None,
            expires_in: None,
            error: Some(error),
            reason: Some(reason),
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Runs `cmd` and publishes the answer on `topic`. `refresh` asks the refresher for a new
/// token and waits (up to [`REFRESH_WAIT`]) for it.
pub async fn execute(
    cmd: Command,
    tokens: Handle,
    client: AsyncClient,
    topic: String,
    cancel: CancellationToken,
) {
    let answer = match cmd.name.as_str() {
        "refresh" => tokio::select! {
            () = cancel.cancelled() => return,
            a = refresh(cmd.id, &tokens) => a,
        },
        other => Answer::error(
            cmd.id,
            other,
            "unknown_command",
            "known commands: refresh".to_owned(),
        ),
    };
    tracing::info!(command = %answer.command, ok = answer.ok, "MQTT command answered");
    tokio::select! {
        () = cancel.cancelled() => {}
        r = client.publish(topic, QoS::AtLeastOnce, false, answer.to_vec()) => {
            if r.is_err() {
                tracing::debug!("the MQTT session is gone; command answer not sent");
            }
        }
    }
}

async fn refresh(id: Option<String>, tokens: &Handle) -> Answer {
    let before = tokens.current.borrow().clone();
    let mut rx = tokens.current.clone();
    rx.borrow_and_update();
    tokens.refresh_now();
    let newer = |t: &Option<Arc<AssetToken>>| {
        t.as_ref()
            .filter(|t| t.is_live() && before.as_ref().is_none_or(|b| !Arc::ptr_eq(b, t)))
            .cloned()
    };
    let wait = async {
        loop {
            if rx.changed().await.is_err() {
                return None;
            }
            if let Some(t) = newer(&rx.borrow_and_update()) {
                return Some(t);
            }
        }
    };
    match tokio::time::timeout(REFRESH_WAIT, wait).await {
        Ok(Some(t)) => Answer {
            id,
            command: "refresh".to_owned(),
            ok: true,
            expires_at: Some(clock::rfc3339(t.claims.exp)),
            expires_in: Some(t.remaining().as_secs()),
            error: None,
            reason: None,
        },
        _ => {
            let snap = tokens.snapshot();
            let reason = snap.last_error.unwrap_or_else(|| {
                format!(
                    "no new token within {}s (state {})",
                    REFRESH_WAIT.as_secs(),
                    snap.state.as_str()
                )
            });
            Answer::error(id, "refresh", "refresh_failed", reason)
        }
    }
}

/// The answer to a message that is not a command.
pub fn unreadable(reason: &str) -> Answer {
    Answer::error(None, "", "bad_command", reason.to_owned())
}

/// The answer when too many commands are running already.
pub fn busy(cmd: &Command) -> Answer {
    Answer::error(
        cmd.id.clone(),
        &cmd.name,
        "busy",
        "too many commands in progress; try again".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_words_and_json() {
        let c = Command::parse(b" refresh\n").unwrap();
        assert_eq!((c.id, c.name.as_str()), (None, "refresh"));
        let c = Command::parse(br#"{"command":"refresh","id":"42"}"#).unwrap();
        assert_eq!((c.id.as_deref(), c.name.as_str()), (Some("42"), "refresh"));
        let c = Command::parse(br#"{"cmd":"reboot","id":7}"#).unwrap();
        assert_eq!((c.id.as_deref(), c.name.as_str()), (Some("7"), "reboot"));
    }

    #[test]
    fn garbage_gets_an_error_answer() {
        for bad in [
            &b"\xff\xfe"[..],
            b"",
            b"two words",
            b"{not json",
            br#"{"id":1}"#,
        ] {
            let a = unreadable(Command::parse(bad).unwrap_err());
            assert!(!a.ok);
            assert_eq!(a.error, Some("bad_command"));
            let json: serde_json::Value = serde_json::from_slice(&a.to_vec()).unwrap();
            assert_eq!(json["ok"], false);
        }
    }
}
