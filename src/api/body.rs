//! The response body of the socket API: a whole body, or a stream of lines (the NDJSON
//! watch) fed through a channel by a producer task.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::conns::BusyGuard;
use wire::http::Reply;

/// What every API handler answers.
pub type ApiReply = Response<ApiBody>;

/// A whole body or a line stream.
#[derive(Debug)]
pub enum ApiBody {
    Full(Full<Bytes>),
    Lines(Lines),
}

/// A streamed body: each chunk the producer sends is one frame; it ends when the producer
/// drops its sender. While alive it keeps its connection marked busy (a stream is not an
/// idle connection that may be closed to make room).
#[derive(Debug)]
pub struct Lines {
    rx: mpsc::Receiver<Bytes>,
    _busy: BusyGuard,
}

// === impl ApiBody ===

impl ApiBody {
    /// A streamed body and the sender that feeds it.
    pub fn lines(busy: BusyGuard, capacity: usize) -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (tx, Self::Lines(Lines { rx, _busy: busy }))
    }
}

/// Converts a whole-body reply (the shared `http` helpers build those).
pub fn full(reply: Reply) -> ApiReply {
    reply.map(ApiBody::Full)
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ApiBody::Full(f) => Pin::new(f).poll_frame(cx),
            ApiBody::Lines(l) => l.rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ApiBody::Full(f) => f.is_end_stream(),
            ApiBody::Lines(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ApiBody::Full(f) => f.size_hint(),
            ApiBody::Lines(_) => SizeHint::default(),
        }
    }
}
