//! SVG charts beside the reports (plotters, SVG backend only): for each
//! run its timeline (delivered MB/s, latency, relay RSS and CPU, one point
//! a second) and its latency CDF; for `compare` one CDF with a line per
//! relay (and receiver group); for `receivers-sweep` p99 and delivery
//! against the frame rate.

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::run::Summary;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// A named line of (x, y) points.
pub type Line = (String, Vec<(f64, f64)>);

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn color(i: usize) -> RGBColor {
    // Palette99 without its pale first entries' look-alikes next to each other.
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

/// Says on stderr what was written, or why not.
fn done(path: &Path, r: Result<(), String>) {
    match r {
        Ok(()) => eprintln!("loadtest: wrote {}", path.display()),
        Err(e) => eprintln!("loadtest: cannot draw {}: {e}", path.display()),
    }
}

/// The span of `v` (at least `min_span` wide, from 0 if `from_zero`), with 5 % headroom.
fn span(v: impl Iterator<Item = f64>, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for x in v.filter(|x| x.is_finite()) {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    (lo, hi + (hi - lo) * 0.05)
}

/// One panel: `lines` over a linear x range `x`, y from 0.
fn panel(
    area: &Area,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x: (f64, f64),
    lines: &[Line],
) -> Result<(), String> {
    let (_, y_hi) = span(lines.iter().flat_map(|l| l.1.iter().map(|p| p.1)), true);
    // Headroom above the data for the legend (one row per line).
    let y_hi = y_hi * (1.0 + 0.1 * lines.len().min(6) as f64);
    let mut ch = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(x.0..x.1, 0f64..y_hi)
        .map_err(err)?;
    ch.configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in lines.iter().enumerate() {
        let c = color(i);
        ch.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    if !lines.is_empty() {
        ch.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// A run's timeline: delivered MB/s, latency p50/p99, relay RSS and CPU,
/// one point per second (per group too when there is more than one).
pub fn timeline(path: &Path, title: &str, s: &Summary) -> Result<(), String> {
    let tl = &s.timeline;
    let root = SVGBackend::new(path, (960, 1100)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    let panels = root.split_evenly((4, 1));
    let x = (0.0, tl.last().map_or(1.0, |k| k.t.max(1.0)));
    let pts = |f: &dyn Fn(&crate::run::Tick) -> Option<f64>| -> Vec<(f64, f64)> {
        // A second without a sample (e.g. no frame delivered) has no point.
        tl.iter()
            .filter_map(|k| f(k).filter(|v| v.is_finite()).map(|v| (k.t, v)))
            .collect()
    };
    let grouped = s.groups.len() > 1;
    let mut tput = vec![("all receivers".to_string(), pts(&|k| Some(k.mbps)))];
    let mut lat = vec![
        ("p50, all".to_string(), pts(&|k| Some(k.p50_ms))),
        ("p99, all".to_string(), pts(&|k| Some(k.p99_ms))),
    ];
    if grouped {
        for (i, g) in s.groups.iter().enumerate() {
            tput.push((g.name.clone(), pts(&|k| k.groups.get(i).map(|v| v.0))));
            lat.push((
                format!("p99, {}", g.name),
                pts(&|k| k.groups.get(i).map(|v| v.1)),
            ));
        }
    }
    let x_desc = "seconds since the first frame";
    panel(
        &panels[0],
        "delivered (intact bytes read by the receivers)",
        x_desc,
        "MB/s",
        x,
        &tput,
    )?;
    panel(
        &panels[1],
        "latency of the frames delivered in each second",
        x_desc,
        "ms",
        x,
        &lat,
    )?;
    panel(
        &panels[2],
        "relay RSS",
        x_desc,
        "MB",
        x,
        &[("relay RSS".into(), pts(&|k| k.rss_mb))],
    )?;
    panel(
        &panels[3],
        "relay CPU",
        x_desc,
        "% of one core",
        x,
        &[("relay CPU".into(), pts(&|k| k.relay_cpu))],
    )?;
    root.present().map_err(err)
}

/// The quantiles a CDF is drawn at: every 0.1 % and the tail.
fn cdf_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut qs: Vec<f64> = (0..=999).map(|i| i as f64 / 1000.0).collect();
    qs.extend([0.9995, 0.9999, 1.0]);
    qs.iter()
        .map(|&q| ((h.value_at_quantile(q) as f64 / 1000.0).max(0.001), q))
        .collect()
}

/// A latency CDF (log-scale ms) with one line per named histogram.
pub fn cdf(path: &Path, title: &str, hists: &[(String, Histogram<u64>)]) {
    let r = (|| {
        let lines: Vec<Line> = hists
            .iter()
            .map(|(n, h)| {
                let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
                (
                    format!("{n} (p50 {:.1}, p99 {:.1} ms)", q(0.5), q(0.99)),
                    cdf_points(h),
                )
            })
            .collect();
        let xs = lines.iter().flat_map(|l| l.1.iter().map(|p| p.0));
        let (lo, hi) = xs.fold((f64::INFINITY, 0f64), |(a, b), x| (a.min(x), b.max(x)));
        let (lo, hi) = if lo.is_finite() && hi > lo {
            (lo * 0.8, hi * 1.25)
        } else {
            (0.1, 1000.0)
        };
        let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut ch = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)
            .map_err(err)?;
        ch.configure_mesh()
            .x_desc("latency, ms (send to last byte read; log scale)")
            .y_desc("fraction of frames delivered")
            .draw()
            .map_err(err)?;
        // One colour per relay (the name's first word); a slow group dashed.
        let mut keys: Vec<&str> = Vec::new();
        for ((name, pts), (hname, _)) in lines.iter().zip(hists) {
            let key = hname.split(' ').next().unwrap_or("");
            let i = keys.iter().position(|k| *k == key).unwrap_or_else(|| {
                keys.push(key);
                keys.len() - 1
            });
            let style = color(i).stroke_width(2);
            let anno = if hname.ends_with("slow") {
                ch.draw_series(DashedLineSeries::new(pts.iter().copied(), 6, 4, style))
                    .map_err(err)?
            } else {
                ch.draw_series(LineSeries::new(pts.iter().copied(), style))
                    .map_err(err)?
            };
            anno.label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        ch.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)
    })();
    done(path, r);
}

/// The latency histograms of `runs` merged per receiver group, in the
/// groups' order (`all` when a run has one group).
pub fn merged_hists(runs: &[Summary]) -> Vec<(String, Histogram<u64>)> {
    let mut order: Vec<String> = Vec::new();
    let mut m: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    for s in runs {
        for g in &s.groups {
            let Some(h) = &g.hist else { continue };
            if !m.contains_key(&g.name) {
                order.push(g.name.clone());
                m.insert(g.name.clone(), crate::peer::new_hist());
            }
            let _ = m.get_mut(&g.name).unwrap().add(h);
        }
    }
    order
        .into_iter()
        .filter_map(|n| m.remove(&n).map(|h| (n, h)))
        .collect()
}

/// A run's charts in `dir`: `BASE-timeline.svg` and `BASE-latency-cdf.svg`.
pub fn for_run(dir: &Path, base: &str, s: &Summary) {
    let _ = std::fs::create_dir_all(dir);
    let title = format!("{} against {}", s.scenario, s.label);
    let p = dir.join(format!("{base}-timeline.svg"));
    done(&p, timeline(&p, &title, s));
    let hists: Vec<(String, Histogram<u64>)> = merged_hists(std::slice::from_ref(s))
        .into_iter()
        .map(|(n, h)| (if n == "all" { s.label.clone() } else { n }, h))
        .collect();
    cdf(
        &dir.join(format!("{base}-latency-cdf.svg")),
        &format!("{title}: latency CDF"),
        &hists,
    );
}

/// `receivers-sweep`: p99 and delivery against the frame rate, one line
/// per relay (and round); the p99 bound as a dashed line.
pub fn sweep(path: &Path, title: &str, p99: &[Line], delivered: &[Line], bound_ms: f64) {
    let r = (|| {
        let root = SVGBackend::new(path, (960, 800)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
        let (top, bottom) = root.split_vertically(440);
        let x = span(p99.iter().flat_map(|l| l.1.iter().map(|p| p.0)), true);
        let mut lines = p99.to_vec();
        lines.push((
            format!("p99 bound {bound_ms} ms"),
            vec![(x.0, bound_ms), (x.1, bound_ms)],
        ));
        panel(
            &top,
            "p99 latency at each rate",
            "frames per second",
            "p99 ms",
            x,
            &lines,
        )?;
        panel(
            &bottom,
            "frames delivered at each rate",
            "frames per second",
            "% of frames × receivers",
            x,
            delivered,
        )?;
        root.present().map_err(err)
    })();
    done(path, r);
}

/// `cost`: log10 of relay core-ms per delivered GB and of CPU µs per
/// delivered message against log2 of the message size, one line per
/// receiver count.
pub fn cost(path: &Path, title: &str, per_gb: &[Line], per_msg: &[Line]) {
    let r = (|| {
        let root = SVGBackend::new(path, (960, 800)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
        let (top, bottom) = root.split_vertically(400);
        let x = span(per_gb.iter().flat_map(|l| l.1.iter().map(|p| p.0)), false);
        panel(
            &top,
            "relay CPU per delivered GB (log10 of core-ms: 2 is 0.1 s, 3 is 1 s)",
            "log2 message bytes (10: 1 KiB, 20: 1 MiB, 25: 32 MiB)",
            "log10 core-ms per GB",
            x,
            per_gb,
        )?;
        panel(
            &bottom,
            "relay CPU per delivered message (log10 of µs: 1 is 10 µs, 3 is 1 ms)",
            "log2 message bytes (10: 1 KiB, 20: 1 MiB, 25: 32 MiB)",
            "log10 µs per message",
            x,
            per_msg,
        )?;
        root.present().map_err(err)
    })();
    done(path, r);
}
