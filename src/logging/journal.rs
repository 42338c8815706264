//! The journal's `<N>` line prefix, which `tracing-subscriber` does not write.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Writes the event's syslog priority in angle brackets (the `sd-daemon(3)` convention
/// journald turns into `PRIORITY=`), then the line of the format it wraps.
pub struct Journal<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Journal<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", super::priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}
