//! The test picture of `bitstream-relay pattern`: RGBA8 pixels that show
//! motion (diagonal bands and a bar that move every frame), latency (the
//! send time as digits, and the header timestamp as digits and as 32 bars,
//! one per bit) and the signal state (a green square with the signal's
//! tick, grey when the signal is off). Pure drawing, no I/O.

/// An RGBA8 colour.
type Rgba = [u8; 4];

const WHITE: Rgba = [255, 255, 255, 255];
const BLACK: Rgba = [0, 0, 0, 255];
const GREEN: Rgba = [40, 200, 80, 255];
const GREY: Rgba = [90, 90, 90, 255];
const BAND: Rgba = [240, 200, 40, 255];

/// Glyphs 3 pixels wide and 5 high, one row per 3 bits (high bit left).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        ':' => [0b000, 0b010, 0b000, 0b010, 0b000],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        _ => [0; 5],
    }
}

/// What one picture shows besides motion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Frame number since the pattern started.
    pub(crate) frame: u64,
    /// When the frame is sent, in milliseconds since the Unix epoch.
    pub(crate) sent_unix_ms: u64,
    /// The frame's header timestamp (milliseconds since the stream began).
    pub(crate) timestamp: u32,
    /// The signal's current tick, `None` when the signal is off.
    pub(crate) signal_tick: Option<u64>,
}

/// A canvas of `width` × `height` RGBA8 pixels that writes outside it
/// are clipped from.
struct Canvas<'a> {
    width: usize,
    height: usize,
    px: &'a mut [u8],
}

impl Canvas<'_> {
    fn set(&mut self, x: usize, y: usize, c: Rgba) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 4;
            self.px[i..i + 4].copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: Rgba) {
        for yy in y..(y + h).min(self.height) {
            for xx in x..(x + w).min(self.width) {
                self.set(xx, yy, c);
            }
        }
    }

    /// Draws `text` with its top-left corner at (x, y), each glyph pixel
    /// `scale` pixels square, white on a black box.
    fn text(&mut self, x: usize, y: usize, scale: usize, text: &str) {
        let advance = 4 * scale;
        self.rect(
            x,
            y,
            advance * text.chars().count() + scale,
            7 * scale,
            BLACK,
        );
        for (i, c) in text.chars().enumerate() {
            let gx = x + scale + i * advance;
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        self.rect(
                            gx + col * scale,
                            y + scale + row * scale,
                            scale,
                            scale,
                            WHITE,
                        );
                    }
                }
            }
        }
    }
}

/// `HH:MM:SS.mmm` (UTC) of a time in milliseconds since the Unix epoch.
pub(crate) fn clock_text(unix_ms: u64) -> String {
    let day_ms = unix_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// Draws the test picture for `stamp` into `out` (resized to
/// `width * height * 4` bytes).
pub(crate) fn draw(width: u16, height: u16, stamp: &Stamp, out: &mut Vec<u8>) {
    let (w, h) = (usize::from(width), usize::from(height));
    out.resize(w * h * 4, 0);
    let t = stamp.frame as usize;
    for y in 0..h {
        for x in 0..w {
            let band = ((x + 2 * t) / 32 + y / 32).is_multiple_of(2);
            let c = if band {
                BAND
            } else {
                [20, (y / 2) as u8, (x / 3) as u8, 255]
            };
            let i = (y * w + x) * 4;
            out[i..i + 4].copy_from_slice(&c);
        }
    }
    let mut canvas = Canvas {
        width: w,
        height: h,
        px: out,
    };
    // A bar sweeping across: motion even where the bands are hidden.
    if w > 0 {
        canvas.rect((t * 4) % w, 0, 3.min(w), h, WHITE);
    }
    let scale = (h / 60).max(1);
    let line = 8 * scale;
    canvas.text(2 * scale, 2 * scale, scale, &clock_text(stamp.sent_unix_ms));
    canvas.text(2 * scale, 2 * scale + line, scale, &stamp.frame.to_string());
    canvas.text(
        2 * scale,
        2 * scale + 2 * line,
        scale,
        &stamp.timestamp.to_string(),
    );
    // The signal: a green square with its tick, grey when off.
    let side = 7 * scale * 2;
    let sx = w.saturating_sub(side + 2 * scale);
    match stamp.signal_tick {
        Some(tick) => {
            canvas.rect(sx, 2 * scale, side, side, GREEN);
            canvas.text(
                sx + scale,
                2 * scale + side / 4,
                scale,
                &(tick % 100).to_string(),
            );
        }
        None => canvas.rect(sx, 2 * scale, side, side, GREY),
    }
    // The timestamp's 32 bits as bars along the bottom, lowest bit left.
    let bar = (w / 32).max(1);
    let bar_h = (h / 20).max(1);
    for bit in 0..32 {
        let c = if stamp.timestamp >> bit & 1 == 1 {
            WHITE
        } else {
            BLACK
        };
        canvas.rect(bit * bar, h.saturating_sub(bar_h), bar, bar_h, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(frame: u64, timestamp: u32, signal_tick: Option<u64>) -> Stamp {
        Stamp {
            frame,
            sent_unix_ms: 1_700_000_000_123,
            timestamp,
            signal_tick,
        }
    }

    #[test]
    fn the_clock_reads_utc_time_of_day() {
        assert_eq!(clock_text(0), "00:00:00.000");
        assert_eq!(clock_text(86_400_000 + 3_723_045), "01:02:03.045");
    }

    #[test]
    fn consecutive_frames_differ_and_show_the_signal_state() {
        let (mut a, mut b, mut off) = (Vec::new(), Vec::new(), Vec::new());
        draw(160, 90, &stamp(1, 33, Some(1)), &mut a);
        draw(160, 90, &stamp(2, 66, Some(1)), &mut b);
        draw(160, 90, &stamp(1, 33, None), &mut off);
        assert_eq!(a.len(), 160 * 90 * 4);
        assert_ne!(a, b, "motion");
        assert_ne!(a, off, "signal on and off look different");
        // The signal square's corner: green when on, grey when off.
        let corner = |p: &[u8]| {
            let (x, y) = (160 - 14 - 2, 2);
            p[(y * 160 + x) * 4..][..4].to_vec()
        };
        assert_eq!(corner(&a), GREEN);
        assert_eq!(corner(&off), GREY);
    }

    #[test]
    fn the_timestamp_bars_encode_its_bits() {
        let mut p = Vec::new();
        let ts = 0b1011;
        draw(320, 180, &stamp(0, ts, None), &mut p);
        let bar = 320 / 32;
        let y = 179;
        for bit in 0..32 {
            let x = bit * bar + bar / 2;
            let on = p[(y * 320 + x) * 4] == 255;
            assert_eq!(on, ts >> bit & 1 == 1, "bit {bit}");
        }
    }

    #[test]
    fn tiny_pictures_do_not_panic() {
        let mut p = Vec::new();
        for (w, h) in [(1, 1), (2, 7), (31, 3), (64, 1)] {
            draw(w, h, &stamp(5, u32::MAX, Some(99)), &mut p);
            assert_eq!(p.len(), usize::from(w) * usize::from(h) * 4);
        }
    }
}
