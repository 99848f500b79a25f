//! Streams a moving test pattern to a channel as keyframes + ZRLE deltas,
//! and prints the inputs receivers send back.
//!
//!     cargo run --release --example source_pattern -- ws://127.0.0.1:9100/source/demo [fps] [width] [height]

use std::time::{Duration, Instant};

use bitstream_relay::client::Source;
use bitstream_relay::protocol::{Header, HEADER_LEN};

fn pattern(w: u16, h: u16, t: u32, out: &mut Vec<u8>) {
    out.clear();
    for y in 0..h as u32 {
        for x in 0..w as u32 {
            let band = ((x + 2 * t) / 32 + y / 32).is_multiple_of(2);
            let (r, g, b) = if band {
                (240, 200, 40)
            } else {
                (20, (y / 2) as u8, (x / 3) as u8)
            };
            out.extend_from_slice(&[r, g, b, 255]);
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .map_or("ws://127.0.0.1:9100/source/demo", String::as_str);
    let fps: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    let w: u16 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(640);
    let h: u16 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(360);
    let mut src = Source::connect(url).await?;
    eprintln!("streaming {w}x{h} at {fps} fps to {url}");
    let period = Duration::from_secs_f64(1.0 / fps.max(1) as f64);
    let start = Instant::now();
    let mut frame = Vec::new();
    for t in 0u32.. {
        pattern(w, h, t, &mut frame);
        src.send_picture(w, h, &frame).await?;
        let deadline = tokio::time::Instant::from_std(start + period * (t + 1));
        // Between frames, print whatever inputs arrive.
        while let Ok(input) = tokio::time::timeout_at(deadline, src.recv_input()).await {
            if let Ok(hd) = Header::parse(&input) {
                eprintln!("input {:?} {:?}", hd.input_type(), &input[HEADER_LEN..]);
            }
        }
    }
    Ok(())
}
