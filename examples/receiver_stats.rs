//! Joins a channel as a receiver, rebuilds the picture and signal state,
//! and prints frames per second, MB/s and reconnections once a second.
//!
//!     cargo run --release --example receiver_stats -- ws://127.0.0.1:9100/stream/demo

use std::time::{Duration, Instant};

use bitstream_relay::client::{Event, Receiver};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:9100/stream/demo".into());
    let mut rx = Receiver::connect(&url).await?;
    let mut last = Instant::now();
    let (mut frames, mut bytes) = (0u64, 0u64);
    loop {
        match rx.next().await {
            Event::Picture(h) | Event::Signal(h) | Event::Frame(h, _) => {
                frames += 1;
                bytes += 16 + h.length as u64;
            }
            Event::Reconnected => eprintln!("reconnected"),
        }
        if last.elapsed() >= Duration::from_secs(1) {
            let secs = last.elapsed().as_secs_f64();
            let size = rx.picture().map_or((0, 0), |p| (p.width, p.height));
            println!(
                "{:.1} fps  {:.2} MB/s  picture {}x{}  signal keys {}  reconnects {}",
                frames as f64 / secs,
                bytes as f64 / secs / 1e6,
                size.0,
                size.1,
                rx.signal().len(),
                rx.reconnects()
            );
            (frames, bytes) = (0, 0);
            last = Instant::now();
        }
    }
}
