//! Server-Sent Events, one shape for every stream (`/jobs/{id}/events`,
//! `/sweeps/{id}/events`, `/datasets/{id}/events`): a `snapshot` of the
//! thing now, then what its service says happens next, with a comment line
//! every 15 seconds so that proxies do not close a quiet stream. The
//! services decide what follows and when it ends; this file only frames it.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, KeepAliveStream, Sse};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use serde::Serialize;

use super::connections::EventStreamSlot;

/// How often a quiet stream sends a comment to stay open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The response of an event-stream handler.
pub type EventStream = Sse<KeepAliveStream<BoxStream<'static, Result<Event, Infallible>>>>;

/// `snapshot` as the first event (named `snapshot`), then each
/// `(event name, data)` of `follow` until it ends. `slot` (the cap on open
/// streams) is held for as long as the stream runs, and freed when it ends
/// or its client leaves.
pub fn snapshot_then_follow<T, U, S>(slot: EventStreamSlot, snapshot: &T, follow: S) -> EventStream
where
    T: Serialize,
    U: Serialize + Send,
    S: Stream<Item = (&'static str, U)> + Send + 'static,
{
    let first = event("snapshot", snapshot);
    let events = async_stream::stream! {
        let _slot = slot;
        yield Ok(first);
        futures::pin_mut!(follow);
        while let Some((kind, data)) = follow.next().await {
            yield Ok(event(kind, &data));
        }
    };
    Sse::new(events.boxed()).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// One event: its name and its data as compact JSON.
fn event<T: Serialize>(kind: &str, data: &T) -> Event {
    Event::default()
        .event(kind)
        .data(serde_json::to_string(data).unwrap_or_default())
}
