//! `POST /v1/mqtt/publish`: local apps publish through the agent's MQTT session.
//!
//! Body: `{"topic": "...", "payload": ..., "qos": 0|1, "retain": false}`. `payload` is a
//! string (sent as its UTF-8 bytes) or any other JSON value (sent as compact JSON);
//! `payload_base64` carries binary instead. `qos` defaults to 1 and `retain` to false.
//! QoS 2 is refused: messages carried over a reconnect are sent again (at least once),
//! which exactly-once cannot promise.
//!
//! Answers: 202 when queued (QoS 1: delivered at least once, even across reconnects),
//! 400 for a bad body or topic, 403 for a topic outside the prefix, 404 when MQTT is not
//! configured, 413 for an oversized payload, 503 + `Retry-After` when the queue is full or
//! there is no session.

use base64::Engine as _;
use hyper::body::Incoming;
use hyper::header::{ALLOW, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, StatusCode};
use rumqttc::{Publish, QoS};
use serde::{Deserialize, Serialize};

use crate::api::reply::error;
use crate::mqtt::MAX_PAYLOAD;
use crate::mqtt::topics::TopicError;
use crate::mqtt::{Handle, Rejected};
use wire::http::{self, BodyError, Reply};

/// The request body may hold a base64 or JSON-escaped payload of [`MAX_PAYLOAD`] bytes.
const MAX_BODY: usize = MAX_PAYLOAD * 2 + 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    topic: String,
    #[serde(default)]
    payload: Option<serde_json::Value>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default = "default_qos")]
    qos: u8,
    #[serde(default)]
    retain: bool,
}

fn default_qos() -> u8 {
    1
}

#[derive(Serialize)]
struct Accepted<'a> {
    queued: bool,
    topic: &'a str,
    qos: u8,
    bytes: usize,
}

/// Handles the route for any method (`mqtt` is `None` when `[mqtt]` is off).
pub async fn reply(mqtt: Option<&Handle>, req: Request<Incoming>) -> Reply {
    if req.method() != Method::POST {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let Some(mqtt) = mqtt else {
        return error(
            StatusCode::NOT_FOUND,
            "mqtt_disabled",
            "the MQTT uplink is not configured (set mqtt.url)",
        );
    };
    let bytes = match http::read_body(req, MAX_BODY).await {
        Ok(b) => b,
        Err(BodyError::TooLarge(_)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "request body too large",
            );
        }
        Err(BodyError::Read) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "could not read the body",
            );
        }
    };
    let body: Body = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => {
            let reason = format!("expected {{\"topic\", \"payload\", \"qos\", \"retain\"}}: {e}");
            return error(StatusCode::BAD_REQUEST, "bad_request", &reason);
        }
    };
    let publish = match build(mqtt, body) {
        Ok(p) => p,
        Err(r) => return error(r.status, r.code, &r.reason),
    };
    let (topic, qos, len) = (
        publish.topic.clone(),
        publish.qos as u8,
        publish.payload.len(),
    );
    match mqtt.queue().push(publish) {
        Ok(()) => http::json(
            StatusCode::ACCEPTED,
            &Accepted {
                queued: true,
                topic: &topic,
                qos,
                bytes: len,
            },
        ),
        Err(rejected) => {
            let (code, retry) = match rejected {
                Rejected::Full => ("queue_full", "1"),
                Rejected::Disconnected => ("mqtt_disconnected", "5"),
            };
            tracing::debug!(reason = %rejected, "refused a local MQTT publish");
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, code, &rejected.to_string());
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(retry));
            r
        }
    }
}

/// Why a body was refused.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    reason: String,
}

/// Checks the body and turns it into a PUBLISH.
fn build(mqtt: &Handle, body: Body) -> Result<Publish, Refusal> {
    let bad = |reason: &str| Refusal {
        status: StatusCode::BAD_REQUEST,
        code: "bad_request",
        reason: reason.to_owned(),
    };
    if let Err(e) = mqtt.topics().check_local(&body.topic) {
        let status = match e {
            TopicError::OutsidePrefix { .. } | TopicError::AgentTopic { .. } => {
                StatusCode::FORBIDDEN
            }
            _ => StatusCode::BAD_REQUEST,
        };
        return Err(Refusal {
            status,
            code: "bad_topic",
            reason: e.to_string(),
        });
    }
    let qos = match body.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => return Err(bad("qos must be 0 or 1")),
    };
    let payload = match (body.payload, body.payload_base64) {
        (Some(_), Some(_)) => return Err(bad("give payload or payload_base64, not both")),
        (None, None) => Vec::new(),
        (Some(serde_json::Value::String(s)), None) => s.into_bytes(),
        (Some(v), None) => serde_json::to_vec(&v).unwrap_or_default(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|_| bad("payload_base64 is not valid base64"))?,
    };
    if payload.len() > MAX_PAYLOAD {
        return Err(Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_large",
            reason: format!("the payload is larger than {MAX_PAYLOAD} bytes"),
        });
    }
    let mut publish = Publish::new(body.topic, qos, payload);
    publish.retain = body.retain;
    Ok(publish)
}
