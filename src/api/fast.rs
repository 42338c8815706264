//! The fast path: what device software asks for all day, answered straight from the socket.
//!
//! Every connection starts here. Request heads are read into one buffer and parsed with
//! httparse (hyper's own parser). A GET of a route answered from the head alone
//! ([`Route::head_only`]: token, status, health, metrics), in HTTP/1.1, with no body and
//! no upgrade, from a caller whose role allows it, is answered here: one write per answer,
//! the read buffer reused, and a served token's bytes (head and body) rendered once a
//! second however many ask. Anything else (a body, a stream, another method or
//! version, a parse error, a 403 or 404, a head too large) passes the connection to hyper
//! for the rest of its life, with the bytes read so far, so those answers and their
//! defences are hyper's, exactly as before the fast path existed.
//!
//! The bounds are hyper's too: a head must be complete within [`Limits::header_timeout`]
//! of the agent first waiting for it, or the connection is closed. The timer is one per
//! connection, set only when a read would block: a request already sent when its
//! connection is accepted (or its predecessor answered) costs no timer at all. A head
//! longer than [`Limits::max_head_bytes`] or with more than [`MAX_HEADERS`] fields goes to
//! hyper, which answers 431. The answers are byte for byte hyper's (status line, the route's
//! fields, `connection: close` when asked to close, `content-length`, `date`).
//!
//! [`Limits::header_timeout`]: super::Limits::header_timeout
//! [`Limits::max_head_bytes`]: super::Limits::max_head_bytes

use std::cell::RefCell;
use std::future::{Future as _, poll_fn};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::pin;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::StatusCode;
use tokio::time::{Instant, Sleep};

use super::conns::Slot;
use super::io::Conn;
use super::peer::{Caller, Role};
use super::reply::Answer;
use super::router::{HeadOnly, Route};
use super::routes::token::Ask;
use super::{MAX_HEADERS, Shared};
use wire::clock::Clock;
use wire::http::Reply;

/// What becomes of a connection the fast path leaves.
#[derive(Debug)]
pub enum Next {
    /// Closed: the client left, was too slow or asked to close, or room or shutdown
    /// ended it.
    Close,
    /// hyper serves the rest of the connection, starting with these bytes.
    Hyper(Bytes),
}

/// A request the fast path answers; ranges are into the read buffer.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    /// The head's length in bytes.
    len: usize,
    route: HeadOnly,
    /// The route's path, for the request counters.
    path: &'static str,
    query: Option<Range<usize>>,
    accept: Option<Range<usize>>,
    /// The client sent `Connection: close`.
    close: bool,
}

/// What the bytes read so far hold.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Fast(Head),
    /// Not yet a whole head.
    Partial,
    /// For hyper.
    Other,
}

/// Serves the connection's requests until it closes or is hyper's.
pub async fn serve(io: &mut Conn, shared: &Shared, caller: &Caller, slot: &Slot) -> Next {
    let limits = &shared.limits;
    // Sized by the first read (`Conn::read_buf`), reused for every request after it.
    let mut buf: Vec<u8> = Vec::new();
    // For built answers only; a whole one is written from `LAST`.
    let mut out: Vec<u8> = Vec::new();
    // The head timer is set when the agent first has to wait for a head: a request that
    // is already there when its connection is accepted, or when the previous answer has
    // been written, is read and answered without one.
    let mut timer = pin!(None::<Sleep>);
    let mut evicted = pin!(slot.evicted());
    let mut shutdown = pin!(caller.shutdown.cancelled());
    loop {
        let mut timed = false;
        let head = loop {
            match parse(&buf, caller.role) {
                Parsed::Fast(head) if head.len <= limits.max_head_bytes => break head,
                Parsed::Partial if buf.len() < limits.max_head_bytes => {}
                Parsed::Fast(_) | Parsed::Partial | Parsed::Other => {
                    return Next::Hyper(Bytes::from(buf));
                }
            }
            let mut read = pin!(io.read_buf(&mut buf));
            // The read first: when it is ready the others are not polled at all.
            let event = poll_fn(|cx| {
                if let Poll::Ready(read) = read.as_mut().poll(cx) {
                    return Poll::Ready(Event::Read(read));
                }
                if !timed {
                    let at = Instant::now() + limits.header_timeout;
                    match timer.as_mut().as_pin_mut() {
                        Some(timer) => timer.reset(at),
                        None => timer.set(Some(tokio::time::sleep_until(at))),
                    }
                    timed = true;
                }
                if timer
                    .as_mut()
                    .as_pin_mut()
                    .is_some_and(|t| t.poll(cx).is_ready())
                {
                    return Poll::Ready(Event::Late);
                }
                if evicted.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Evicted);
                }
                if shutdown.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Shutdown);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Read(Ok(0) | Err(_)) | Event::Late | Event::Shutdown => return Next::Close,
                Event::Read(Ok(_)) => {}
                Event::Evicted => {
                    tracing::debug!(
                        uid = caller.peer.uid,
                        "closed an idle connection to make room"
                    );
                    return Next::Close;
                }
            }
        };
        let busy = slot.activity.enter();
        let ask = Ask {
            query: head
                .query
                .clone()
                .and_then(|r| std::str::from_utf8(&buf[r]).ok()),
            accept: head.accept.clone().map(|r| &buf[r]),
        };
        let answer = head.route.answer(shared, ask).await;
        shared.state.requests.count(head.path, answer.status());
        let written = match answer {
            Answer::Whole { content_type, body } => {
                let whole = whole(content_type, body, head.close, &shared.clock);
                io.write_all(&whole).await
            }
            Answer::Built(reply) => {
                render(&mut out, reply, head.close, &shared.clock).await;
                io.write_all(&out).await
            }
        };
        drop(busy);
        // Evicted as this request arrived (the read is looked at first): it is answered,
        // then the connection goes, as its place is gone.
        if written.is_err() || head.close || slot.is_evicted() || caller.shutdown.is_cancelled() {
            return Next::Close;
        }
        buf.drain(..head.len);
    }
}

/// What ended a wait for more of a request head.
enum Event {
    Read(std::io::Result<usize>),
    /// The head took longer than the header timeout.
    Late,
    Evicted,
    Shutdown,
}

/// Whether `buf` starts with a request the fast path answers for a caller with `role`.
fn parse(buf: &[u8], role: Option<Role>) -> Parsed {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if req.method != Some("GET") || req.version != Some(1) {
        return Parsed::Other;
    }
    let target = req.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let Some(route) = Route::find(path) else {
        return Parsed::Other;
    };
    let Some(head_only) = route.head_only() else {
        return Parsed::Other;
    };
    if role.is_none_or(|r| r < route.role()) || !query.is_none_or(|q| q.bytes().all(query_byte)) {
        return Parsed::Other;
    }
    let mut accept = None;
    let mut close = false;
    for field in req.headers.iter() {
        let name = field.name.as_bytes();
        // By length first: most fields are none of these, and then no bytes are compared.
        let is = |want: &[u8]| same(name, want);
        match name.len() {
            6 if is(b"accept") => accept = accept.or_else(|| Some(within(buf, field.value))),
            10 if is(b"connection") => {
                let value = field.value.trim_ascii();
                if same(value, b"close") {
                    close = true;
                } else if !same(value, b"keep-alive") {
                    return Parsed::Other;
                }
            }
            // A body or an upgrade: hyper's.
            6 if is(b"expect") => return Parsed::Other,
            7 if is(b"upgrade") => return Parsed::Other,
            14 if is(b"content-length") => return Parsed::Other,
            17 if is(b"transfer-encoding") => return Parsed::Other,
            _ => {}
        }
    }
    Parsed::Fast(Head {
        len,
        route: head_only,
        path: route.path(),
        query: query.map(|q| within(buf, q.as_bytes())),
        accept,
        close,
    })
}

/// `a` is `b` in any ASCII case; compared as most clients write it first.
fn same(a: &[u8], b: &[u8]) -> bool {
    a == b || a.eq_ignore_ascii_case(b)
}

/// A query byte that every URI parser takes as it is (RFC 3986 `pchar`, `/`, `?`); a
/// request with any other goes to hyper, which decides.
fn query_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@/?".contains(&b)
}

/// Where `part`, a slice of `buf`, lies in it.
fn within(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    start..start + part.len()
}

/// A whole answer's bytes (200, `content_type`, `body`), as hyper would write them, dated
/// by `clock`.
///
/// The bytes of the last one are kept and written again while the answer and its second
/// are the same: a token's body changes once a second (`expires_in`), as `date` does, so a
/// busy second renders its answer once. A new token replaces the kept bytes at its first
/// answer.
fn whole(content_type: &'static str, body: Bytes, close: bool, clock: &Clock) -> Bytes {
    let now = clock.now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    LAST.with_borrow_mut(|last| {
        // The kept body is held, so no other body can be at its address: equal addresses
        // and lengths are equal bytes.
        let same = last.as_ref().filter(|l| {
            l.second == second
                && l.close == close
                && l.content_type == content_type
                && l.body.as_ptr() == body.as_ptr()
                && l.body.len() == body.len()
        });
        if let Some(l) = same {
            return l.bytes.clone();
        }
        let mut out = Vec::with_capacity(body.len() + 160);
        head(
            &mut out,
            StatusCode::OK,
            [("content-type", content_type.as_bytes())],
            close,
            body.len(),
            now,
        );
        out.extend_from_slice(&body);
        let bytes = Bytes::from(out);
        *last = Some(Written {
            second,
            close,
            content_type,
            body,
            bytes: bytes.clone(),
        });
        bytes
    })
}

/// Writes a built answer into `out`, as hyper would, dated by `clock`.
async fn render(out: &mut Vec<u8>, reply: Reply, close: bool, clock: &Clock) {
    let (parts, mut body) = reply.into_parts();
    // A whole body: its one frame is ready at once.
    let body = match body.frame().await {
        Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
        Some(Err(never)) => match never {},
        None => Bytes::new(),
    };
    out.clear();
    // The head is a few hundred bytes: one allocation for the connection's answers.
    out.reserve(body.len() + 512);
    let fields = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()));
    head(out, parts.status, fields, close, body.len(), clock.now());
    out.extend_from_slice(&body);
}

/// Appends the status line and `fields`, then hyper's own: `connection: close` when
/// closing, `content-length` and `date` (for `now`).
fn head<'a>(
    out: &mut Vec<u8>,
    status: StatusCode,
    fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    close: bool,
    len: usize,
    now: SystemTime,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    date(out, now);
    out.extend_from_slice(b"\r\n\r\n");
}

/// The last whole answer written on this thread, and what it was for.
#[derive(Debug)]
struct Written {
    second: u64,
    close: bool,
    content_type: &'static str,
    body: Bytes,
    bytes: Bytes,
}

thread_local! {
    static LAST: RefCell<Option<Written>> = const { RefCell::new(None) };
    /// The `date` value and the second it was made for (it changes once a second).
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends the IMF-fixdate (RFC 9110 §5.6.7) of `now`.
fn date(out: &mut Vec<u8>, now: SystemTime) {
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *text = httpdate::fmt_http_date(now);
            *at = second;
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(raw: &[u8]) -> Head {
        match parse(raw, Some(Role::Token)) {
            Parsed::Fast(head) => head,
            other => panic!("{other:?} for {}", String::from_utf8_lossy(raw)),
        }
    }

    fn slice(raw: &[u8], r: Option<Range<usize>>) -> Option<&[u8]> {
        r.map(|r| &raw[r])
    }

    #[test]
    fn a_token_request_is_answered_here() {
        let raw = b"GET /v1/token?min_ttl=30 HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\naccept: */*\r\n\r\nGET";
        let head = fast(raw);
        assert_eq!(head.len, raw.len() - 3);
        assert_eq!(head.route, HeadOnly::Token);
        assert_eq!(head.path, "/v1/token");
        assert_eq!(slice(raw, head.query), Some(&b"min_ttl=30"[..]));
        // The first Accept field, as hyper's `HeaderMap::get` gives it.
        assert_eq!(slice(raw, head.accept), Some(&b"text/plain"[..]));
        assert!(!head.close);
        let head = fast(b"GET /metrics HTTP/1.1\r\nConnection: Close \r\n\r\n");
        assert_eq!((head.route, head.close), (HeadOnly::Metrics, true));
        let head = fast(b"GET /v1/health/ready HTTP/1.1\r\nconnection: keep-alive\r\n\r\n");
        assert_eq!((head.route, head.close), (HeadOnly::Ready, false));
    }

    #[test]
    fn an_unfinished_head_waits_for_more() {
        for raw in [
            &b""[..],
            b"GET /v1/tok",
            b"GET /v1/token HTTP/1.1\r\nHost: x\r\n",
        ] {
            assert_eq!(parse(raw, Some(Role::Token)), Parsed::Partial);
        }
    }

    #[test]
    fn everything_else_is_hyper_s() {
        let fields = "x: y\r\n".repeat(MAX_HEADERS + 1);
        let too_many = format!("GET /v1/token HTTP/1.1\r\n{fields}\r\n");
        for raw in [
            &b"POST /v1/token HTTP/1.1\r\n\r\n"[..],
            b"HEAD /v1/token HTTP/1.1\r\n\r\n",
            b"GET /v1/token HTTP/1.0\r\n\r\n",
            b"GET /v1/token/watch HTTP/1.1\r\n\r\n",
            b"GET /v1/nope HTTP/1.1\r\n\r\n",
            b"GET /v1/assets/a/token HTTP/1.1\r\n\r\n",
            b"GET http://localhost/v1/token HTTP/1.1\r\n\r\n",
            b"GET /v1/token?a={} HTTP/1.1\r\n\r\n",
            b"GET /v1/token#x HTTP/1.1\r\n\r\n",
            b"GET /v1/token HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"GET /v1/token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /v1/token HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /v1/token HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET /v1/token HTTP/1.1\r\nConnection: close, x\r\n\r\n",
            b"GET /v1/token HTTP/1.1\r\nBad Field: x\r\n\r\n",
            b"\x16\x03\x01 garbage\r\n\r\n",
            too_many.as_bytes(),
        ] {
            assert_eq!(
                parse(raw, Some(Role::Admin)),
                Parsed::Other,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        // Exactly the field cap is still the fast path's.
        let fields = "x: y\r\n".repeat(MAX_HEADERS);
        fast(format!("GET /v1/token HTTP/1.1\r\n{fields}\r\n").as_bytes());
    }

    #[test]
    fn callers_without_the_role_get_hyper_s_403() {
        assert_eq!(
            parse(b"GET /v1/token HTTP/1.1\r\n\r\n", None),
            Parsed::Other
        );
    }

    #[tokio::test]
    async fn answers_are_hyper_s_bytes() {
        let reply = wire::http::with_type(hyper::StatusCode::OK, "application/json", "{}");
        let mut out = Vec::new();
        render(&mut out, reply, true, &Clock::system()).await;
        let text = String::from_utf8(out).unwrap();
        let (head, date) = text.split_once("date: ").unwrap();
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 2\r\n"
        );
        let (date, body) = date.split_once("\r\n\r\n").unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        assert_eq!(body, "{}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_answer_is_hyper_s_bytes_kept_for_its_second() {
        let clock = Clock::tokio_driven();
        let json = "application/json";
        let body = Bytes::from(br#"{"token":"eyJ"}"#.to_vec());
        let first = whole(json, body.clone(), false, &clock);
        let mut built = Vec::new();
        render(
            &mut built,
            wire::http::with_type(StatusCode::OK, json, body.clone()),
            false,
            &clock,
        )
        .await;
        assert_eq!(first, built, "the same bytes as a built answer");
        let again = whole(json, body.clone(), false, &clock);
        assert_eq!(again.as_ptr(), first.as_ptr(), "kept, not rendered again");
        // Anything that differs is rendered anew: closing, another body (even one with the
        // same bytes), another type, the next second.
        let closing = whole(json, body.clone(), true, &clock);
        assert_ne!(closing.as_ptr(), first.as_ptr());
        assert!(closing.windows(19).any(|w| w == b"connection: close\r\n"));
        let copy = Bytes::from(body.to_vec());
        let other = whole(json, copy.clone(), true, &clock);
        assert_ne!(other.as_ptr(), closing.as_ptr());
        assert_eq!(other, closing);
        let plain = whole("text/plain", copy.clone(), true, &clock);
        assert!(plain.starts_with(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"));
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let later = whole("text/plain", copy, true, &clock);
        assert_ne!(later, plain, "a new second, a new date");
    }
}
