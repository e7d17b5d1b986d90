//! The PNG beside `bench wan`'s table: throughput against RTT, one panel per loss rate,
//! one line per tool (plotters, bitmap backend).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

/// One measured rate.
pub struct Point {
    /// Tool as the table names it.
    pub tool: String,
    /// Loss rate of the path (0.01 = 1 %).
    pub loss: f64,
    /// Round-trip time of the path, ms.
    pub rtt_ms: f64,
    /// What the tool reached, Mbit/s.
    pub mbps: f64,
}

/// Draws `points` into `file` (PNG): panels side by side by loss rate, RTT on x, Mbit/s on
/// y (the same scale in every panel), a line and markers per tool, the same colour for a
/// tool in every panel.
pub fn throughput_vs_rtt(points: &[Point], title: &str, file: &Path) -> Result<()> {
    let mut losses: Vec<f64> = points.iter().map(|p| p.loss).collect();
    losses.sort_by(f64::total_cmp);
    losses.dedup();
    let mut tools: Vec<&str> = Vec::new();
    for p in points {
        if !tools.contains(&p.tool.as_str()) {
            tools.push(&p.tool);
        }
    }
    let panels = losses.len().max(1);
    let x_max = points.iter().map(|p| p.rtt_ms).fold(10.0, f64::max) * 1.15;
    // Head room above the data for the legend (upper right), so it never hides a point.
    let y_max = points.iter().map(|p| p.mbps).fold(10.0, f64::max) * 1.6;
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", file.display());
    let root = BitMapBackend::new(file, (560 * panels as u32, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| err(&e))?;
    for (area, loss) in root.split_evenly((1, panels)).iter().zip(&losses) {
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{} % loss", loss * 100.0), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("RTT, ms")
            .y_desc("Mbit/s")
            .draw()
            .map_err(|e| err(&e))?;
        for (i, tool) in tools.iter().enumerate() {
            let mut line: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.tool == *tool && p.loss == *loss)
                .map(|p| (p.rtt_ms, p.mbps))
                .collect();
            if line.is_empty() {
                continue;
            }
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            let colour = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(*tool)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(line.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let dir = std::env::temp_dir().join(format!("xtask-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("wan.png");
        let p = |tool: &str, loss, rtt_ms, mbps| Point {
            tool: tool.into(),
            loss,
            rtt_ms,
            mbps,
        };
        let points = [
            p("ferry (fair)", 0.0, 50.0, 430.0),
            p("ferry (fair)", 0.01, 100.0, 412.0),
            p("iperf3 TCP cubic", 0.0, 50.0, 433.0),
            p("iperf3 TCP cubic", 0.01, 100.0, 3.0),
            p("iperf3 TCP cubic", 0.01, 200.0, 1.0),
        ];
        throughput_vs_rtt(&points, "test", &file).unwrap();
        let png = std::fs::read(&file).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
