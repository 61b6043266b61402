//! Flashcast: a live-commerce streaming engine.
//!
//! Where things live:
//! - a WebSocket frame arrives in [`http::ws`], is decoded by [`flashcast_wire`]
//!   into a connection, room or shop message, checked against [`limits`] and
//!   [`auth`], and answered there, queued to its room or handed to [`commerce`];
//! - [`room`] orders it (sequence numbers, history) and hands each batch to
//!   the [`transport`]'s fanout workers, which own the sockets and write
//!   it; [`engage`] holds the chat, poll, Q&A and moderation rules;
//! - [`media`] is the WebRTC SFU: WHIP ingest from the host, WHEP playback,
//!   its `stream` state announced through the room;
//! - [`store`] keeps what must survive a restart;
//! - [`server`] wires it all together; [`config`] reads the settings.

pub mod auth;
pub mod clock;
pub mod cluster;
pub mod commerce;
pub mod config;
pub mod engage;
pub mod http;
pub mod limits;
pub mod media;
pub mod metrics;
pub mod recording;
pub mod room;
pub mod server;
pub mod store;
pub mod transport;

pub use config::Settings;
pub use server::{start, start_with_clock, Server};
