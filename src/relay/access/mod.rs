//! Who may do what, and how much: tokens ([`auth`]), input rate limits
//! ([`ratelimit`]) and TURN credentials for WebRTC peers ([`turn`]).

pub(crate) mod auth;
pub(crate) mod ratelimit;
pub(crate) mod turn;
