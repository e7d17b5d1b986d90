//! `ferryctl top`: a live view of ferryd in the terminal.
//!
//! Three parts, kept apart so that the first two can be tested without a terminal:
//! - [`Top`], the state: the last answers, a one-minute rate history per session and the
//!   selection. It never reads the clock; times come in as arguments.
//! - Drawing: `Widget for &Top` renders the state into any ratatui buffer.
//! - The loop ([`run`]): a poller thread asks ferryd for `Status` and `Sessions` every
//!   interval over the ordinary control socket (and sends pause/resume), while the main
//!   thread reads keys and redraws. A slow or absent ferryd never blocks the keys: its
//!   error is shown and the poller keeps trying.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_ctl::{Command, Payload, Session, Status, human_bytes, human_rate};
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Cell, Chart, Dataset, GraphType, LegendPosition, Paragraph, Row, StatefulWidget,
    Table, TableState, Widget, Wrap,
};

use super::{Conn, duration_text, or_dash, percent, sender_only};

/// How far back the rate chart reaches.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The most samples one session keeps, whatever the interval (10 a second for a minute).
const MAX_SAMPLES: usize = 600;
/// How long the key loop waits for a key before looking for new answers.
const KEY_WAIT: Duration = Duration::from_millis(100);

/// One rate reading of a session.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// When it was taken, from the start of `top`.
    pub at: Duration,
    /// Payload rate, bits per second.
    pub rate_bps: u64,
    /// Target rate then, bits per second (0 where the peer decides).
    pub target_bps: u64,
}

/// A session's readings over the last [`WINDOW`], oldest first.
#[derive(Clone, Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Adds a reading and forgets those more than [`WINDOW`] older than it.
    pub fn push(&mut self, sample: Sample) {
        self.samples.push_back(sample);
        while let Some(first) = self.samples.front() {
            let too_old = sample.at.saturating_sub(first.at) > WINDOW;
            if too_old || self.samples.len() > MAX_SAMPLES {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// The readings, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }
}

/// One poll's outcome: the server and its sessions, or why they could not be had.
pub type Snapshot = Result<(Status, Vec<Session>), String>;

/// What a key asks the loop to do.
#[derive(Debug, PartialEq)]
pub enum KeyAction {
    /// Nothing beyond redrawing.
    None,
    /// Leave `top`.
    Quit,
    /// Send this command to ferryd.
    Send(Command),
}

/// Everything `top` shows, without the terminal.
#[derive(Debug)]
pub struct Top {
    socket: String,
    interval: Duration,
    now: Duration,
    status: Option<Status>,
    sessions: Vec<Session>,
    history: BTreeMap<u32, History>,
    selected: Option<u32>,
    /// Why the last poll failed; `None` after a good one.
    error: Option<String>,
    /// When the last good answer came.
    answered_at: Option<Duration>,
    /// The outcome of the last pause or resume.
    note: Option<String>,
}

impl Top {
    /// An empty view of the ferryd at `socket`, polled every `interval`.
    pub fn new(socket: &Path, interval: Duration) -> Top {
        Top {
            socket: socket.display().to_string(),
            interval,
            now: Duration::ZERO,
            status: None,
            sessions: Vec::new(),
            history: BTreeMap::new(),
            selected: None,
            error: None,
            answered_at: None,
            note: None,
        }
    }

    /// Takes one poll's outcome at `now`. A good one replaces the sessions, adds a rate
    /// sample to each and forgets the histories of sessions that ended; a failed one keeps
    /// the last answer on screen beside the error.
    pub fn handle_poll(&mut self, now: Duration, snapshot: Snapshot) {
        self.now = now;
        let (status, sessions) = match snapshot {
            Ok(s) => s,
            Err(e) => {
                self.error = Some(e);
                return;
            }
        };
        self.error = None;
        self.answered_at = Some(now);
        let old_index = self.selected_index();
        self.history
            .retain(|id, _| sessions.iter().any(|s| s.id == *id));
        for s in &sessions {
            self.history.entry(s.id).or_default().push(Sample {
                at: now,
                rate_bps: s.rate_bps,
                target_bps: s.target_bps,
            });
        }
        self.status = Some(status);
        self.sessions = sessions;
        // Follow the selected session by id; if it ended, stay at the same row.
        if self.selected_index().is_none() {
            self.selected = old_index
                .map(|i| i.min(self.sessions.len().saturating_sub(1)))
                .and_then(|i| self.sessions.get(i))
                .or(self.sessions.first())
                .map(|s| s.id);
        }
    }

    /// Takes the outcome of a pause or resume, shown until the next one.
    pub fn handle_note(&mut self, note: String) {
        self.note = Some(note);
    }

    /// What a key press means here; moves the selection itself.
    pub fn handle_key(&mut self, key: KeyEvent) -> KeyAction {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => KeyAction::Quit,
            KeyCode::Char('c') if ctrl => KeyAction::Quit,
            KeyCode::Up | KeyCode::Char('k') => {
                self.move_selection(-1);
                KeyAction::None
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.move_selection(1);
                KeyAction::None
            }
            KeyCode::Char('p') => match self.selected {
                Some(id) => KeyAction::Send(Command::Pause { id }),
                None => KeyAction::None,
            },
            KeyCode::Char('r') => match self.selected {
                Some(id) => KeyAction::Send(Command::Resume { id }),
                None => KeyAction::None,
            },
            _ => KeyAction::None,
        }
    }

    /// The selected session, if any is listed.
    pub fn selected(&self) -> Option<&Session> {
        self.selected_index().map(|i| &self.sessions[i])
    }

    /// A session's rate history.
    pub fn history(&self, id: u32) -> Option<&History> {
        self.history.get(&id)
    }

    fn selected_index(&self) -> Option<usize> {
        let id = self.selected?;
        self.sessions.iter().position(|s| s.id == id)
    }

    fn move_selection(&mut self, by: isize) {
        if self.sessions.is_empty() {
            return;
        }
        let last = self.sessions.len() - 1;
        let i = match self.selected_index() {
            Some(i) => i.saturating_add_signed(by).min(last),
            None => 0,
        };
        self.selected = Some(self.sessions[i].id);
    }
}

// --- drawing -------------------------------------------------------------------------

impl Widget for &Top {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let table_height = (self.sessions.len().max(1) as u16).saturating_add(3);
        // An error gets a second line: they can be long (they say what to do).
        let header_height = if self.error.is_some() { 5 } else { 4 };
        let [header, table, chart, footer] = Layout::vertical([
            Constraint::Length(header_height),
            Constraint::Max(table_height),
            Constraint::Min(8),
            Constraint::Length(1),
        ])
        .areas(area);
        self.render_header(header, buf);
        self.render_sessions(table, buf);
        self.render_chart(chart, buf);
        self.render_footer(footer, buf);
    }
}

impl Top {
    fn render_header(&self, area: Rect, buf: &mut Buffer) {
        let bold = Style::new().add_modifier(Modifier::BOLD);
        let first = match &self.status {
            Some(s) => Line::from(vec![
                Span::styled(format!("ferryd {}", s.version), bold),
                Span::raw(format!(
                    " (pid {})  up {}  sessions {} ({} sending, {} receiving)  ",
                    s.pid,
                    duration_text(s.uptime_s),
                    s.sessions,
                    s.sending,
                    s.receiving
                )),
                Span::styled(format!("send {}", human_rate(s.send_rate_bps)), bold),
                Span::raw("  "),
                Span::styled(format!("recv {}", human_rate(s.recv_rate_bps)), bold),
            ]),
            None => Line::raw("waiting for ferryd's first answer"),
        };
        let second = match (&self.error, self.answered_at) {
            (Some(e), answered) => {
                let age = match answered {
                    Some(at) => format!(
                        "; showing its answer from {} ago",
                        duration_text(self.now.saturating_sub(at).as_secs_f64())
                    ),
                    None => String::new(),
                };
                Line::styled(
                    format!("{e} (retrying every {}{age})", interval_text(self.interval)),
                    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                )
            }
            (None, _) => Line::raw(format!(
                "{}  every {}",
                self.socket,
                interval_text(self.interval)
            )),
        };
        Paragraph::new(vec![first, second])
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" ferryctl top "))
            .render(area, buf);
    }

    fn render_sessions(&self, area: Rect, buf: &mut Buffer) {
        let header = Row::new([
            "ID", "USER", "DIR", "POLICY", "RATE", "TARGET", "MIN", "PROGRESS", "%", "LOSS", "RTT",
            "QUEUE", "STATE",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD));
        let rows = self.sessions.iter().map(|s| {
            let below_min = s.direction == "send" && s.state == "running" && s.rate_bps < s.min_bps;
            let rate_style = if below_min {
                Style::new().fg(Color::Red)
            } else {
                Style::new().fg(Color::Green)
            };
            Row::new([
                Cell::from(s.id.to_string()),
                Cell::from(or_dash(s.user.as_deref())),
                Cell::from(s.direction.clone()),
                Cell::from(or_dash(Some(&s.policy))),
                Cell::from(human_rate(s.rate_bps)).style(rate_style),
                Cell::from(sender_only(s, human_rate(s.target_bps))),
                Cell::from(sender_only(s, human_rate(s.min_bps))),
                Cell::from(format!("{}/{}", human_bytes(s.bytes), human_bytes(s.total))),
                Cell::from(percent(s.bytes, s.total)),
                Cell::from(sender_only(s, format!("{:.2}%", s.loss * 100.0))),
                Cell::from(sender_only(s, format!("{:.1} ms", s.rtt_ms))),
                Cell::from(sender_only(s, format!("{:.1} ms", s.queue_ms))),
                Cell::from(s.state.clone()),
            ])
        });
        let widths = [
            Constraint::Length(10), // u32::MAX has ten digits
            Constraint::Length(8),
            Constraint::Length(4),
            Constraint::Length(6),
            Constraint::Length(13),
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Length(21),
            Constraint::Length(4),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
        ];
        let title = if self.sessions.is_empty() {
            " sessions: none running "
        } else {
            " sessions "
        };
        let table = Table::new(rows, widths)
            .header(header)
            .column_spacing(2)
            .block(Block::bordered().title(title))
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
            .highlight_symbol("> ");
        let mut state = TableState::default().with_selected(self.selected_index());
        StatefulWidget::render(table, area, buf, &mut state);
    }

    fn render_chart(&self, area: Rect, buf: &mut Buffer) {
        let Some(s) = self.selected() else {
            Paragraph::new("no session selected")
                .block(Block::bordered().title(" rate "))
                .render(area, buf);
            return;
        };
        let samples: Vec<&Sample> = self
            .history(s.id)
            .map(|h| h.samples().collect())
            .unwrap_or_default();
        let ago = |at: Duration| -(self.now.saturating_sub(at).as_secs_f64());
        let rate: Vec<(f64, f64)> = samples
            .iter()
            .map(|x| (ago(x.at), x.rate_bps as f64))
            .collect();
        let target: Vec<(f64, f64)> = samples
            .iter()
            .filter(|x| x.target_bps > 0)
            .map(|x| (ago(x.at), x.target_bps as f64))
            .collect();
        let top = samples
            .iter()
            .map(|x| x.rate_bps.max(x.target_bps))
            .max()
            .unwrap_or(0)
            .max(1) as f64
            * 1.15;
        let mut datasets = vec![
            Dataset::default()
                .name("rate")
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(Color::Green))
                .data(&rate),
        ];
        if !target.is_empty() {
            datasets.push(
                Dataset::default()
                    .name("target")
                    .marker(Marker::Braille)
                    .graph_type(GraphType::Line)
                    .style(Style::new().fg(Color::Yellow))
                    .data(&target),
            );
        }
        let title = if s.direction == "send" {
            format!(
                " session {} rate, last {} s (target {}) ",
                s.id,
                WINDOW.as_secs(),
                human_rate(s.target_bps)
            )
        } else {
            format!(
                " session {} rate, last {} s (the peer sends and sets the rate) ",
                s.id,
                WINDOW.as_secs()
            )
        };
        let window = WINDOW.as_secs_f64();
        Chart::new(datasets)
            .block(Block::bordered().title(title))
            .legend_position(Some(LegendPosition::TopLeft))
            .hidden_legend_constraints((Constraint::Min(0), Constraint::Min(0)))
            .x_axis(Axis::default().bounds([-window, 0.0]).labels([
                format!("-{}s", WINDOW.as_secs()),
                format!("-{}s", WINDOW.as_secs() / 2),
                "now".to_string(),
            ]))
            .y_axis(Axis::default().bounds([0.0, top]).labels([
                "0".to_string(),
                human_rate((top / 2.0) as u64),
                human_rate(top as u64),
            ]))
            .render(area, buf);
    }

    fn render_footer(&self, area: Rect, buf: &mut Buffer) {
        let mut spans = vec![Span::raw(
            " q quit  ↑/↓ select  p pause  r resume the selected session",
        )];
        if let Some(n) = &self.note {
            spans.push(Span::styled(
                format!("   {n}"),
                Style::new().add_modifier(Modifier::BOLD),
            ));
        }
        Line::from(spans).render(area, buf);
    }
}

/// `1 s`, `500 ms`.
fn interval_text(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Parses `--interval`: `1s`, `500ms`, `2` (seconds); at least 100 ms.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    let secs: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an interval (examples: 1s, 500ms, 2)"))?;
    let d = Duration::try_from_secs_f64(secs * unit)
        .map_err(|_| format!("{s:?} is not an interval"))?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?} is too short an interval (at least 100ms)"));
    }
    Ok(d)
}

/// The buffer as plain text, one line per row, trailing blanks trimmed.
pub fn buffer_text(buf: &Buffer) -> String {
    let mut out = String::new();
    for y in buf.area.top()..buf.area.bottom() {
        let mut line = String::new();
        for x in buf.area.left()..buf.area.right() {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// --- the loop ------------------------------------------------------------------------

/// What the poller hands the key loop (once a second: the size does not matter).
#[allow(clippy::large_enum_variant)]
enum Update {
    Poll(Snapshot),
    Note(String),
}

/// Asks ferryd for the server and its sessions.
fn poll(conn: &mut Conn) -> anyhow::Result<(Status, Vec<Session>)> {
    let Payload::Status(status) = conn.call(Command::Status)? else {
        bail!("ferryd answered status with something else");
    };
    Ok((status, conn.sessions()?))
}

/// Runs `f` on the connection, opening it first if there is none; any failure drops it,
/// so the next call connects afresh (ferryd may have restarted).
fn with_conn<T>(
    conn: &mut Option<Conn>,
    socket: &Path,
    f: impl FnOnce(&mut Conn) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(Conn::open(socket)?),
    };
    let r = f(c);
    if r.is_err() {
        *conn = None;
    }
    r
}

/// The poller thread: a poll every `interval` and each command as it comes, until the
/// key loop hangs up.
fn poller(
    socket: PathBuf,
    interval: Duration,
    commands: mpsc::Receiver<Command>,
    updates: mpsc::Sender<Update>,
) {
    let mut conn = None;
    let mut next = Instant::now();
    loop {
        match commands.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(command) => {
                let what = match &command {
                    Command::Pause { id } => format!("session {id}: paused"),
                    Command::Resume { id } => format!("session {id}: resumed"),
                    other => format!("{other:?}: done"),
                };
                let note = match with_conn(&mut conn, &socket, |c| c.call(command)) {
                    Ok(_) => what,
                    Err(e) => format!("{e:#}"),
                };
                if updates.send(Update::Note(note)).is_err() {
                    return;
                }
                // Show the change at once rather than at the next tick.
                next = Instant::now();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let snapshot = with_conn(&mut conn, &socket, poll).map_err(|e| format!("{e:#}"));
        if updates.send(Update::Poll(snapshot)).is_err() {
            return;
        }
        // After a stall (a slow answer), start counting again rather than catching up.
        next = (next + interval).max(Instant::now());
    }
}

/// `ferryctl top`: the live view until q or Esc; with `once`, one frame printed as text.
pub fn run(socket: &Path, interval: Duration, once: bool) -> anyhow::Result<()> {
    let mut top = Top::new(socket, interval);
    if once {
        let mut conn = None;
        let snapshot = with_conn(&mut conn, socket, poll)?;
        top.handle_poll(Duration::ZERO, Ok(snapshot));
        let (width, height) = ratatui::crossterm::terminal::size().unwrap_or((160, 40));
        let mut buf = Buffer::empty(Rect::new(0, 0, width, height.min(40)));
        (&top).render(buf.area, &mut buf);
        let mut out = std::io::stdout().lock();
        out.write_all(buffer_text(&buf).as_bytes())?;
        out.flush()?;
        return Ok(());
    }

    let (command_tx, command_rx) = mpsc::channel();
    let (update_tx, update_rx) = mpsc::channel();
    let poller_socket = socket.to_path_buf();
    thread::Builder::new()
        .name("ferryctl-poll".into())
        .spawn(move || poller(poller_socket, interval, command_rx, update_tx))
        .context("starting the poller thread")?;

    // Raw mode and the alternate screen; ratatui's panic hook restores the terminal before
    // a panic message is printed.
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            ratatui::restore();
            return Err(e).context("setting up the terminal (is this a terminal?)");
        }
    };
    let result = key_loop(&mut terminal, &mut top, &update_rx, &command_tx);
    ratatui::restore();
    result
}

fn key_loop(
    terminal: &mut ratatui::DefaultTerminal,
    top: &mut Top,
    updates: &mpsc::Receiver<Update>,
    commands: &mpsc::Sender<Command>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut dirty = true;
    loop {
        loop {
            match updates.try_recv() {
                Ok(Update::Poll(s)) => top.handle_poll(start.elapsed(), s),
                Ok(Update::Note(n)) => top.handle_note(n),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => bail!("the poller thread stopped"),
            }
            dirty = true;
        }
        if dirty {
            terminal
                .draw(|f| f.render_widget(&*top, f.area()))
                .context("drawing")?;
            dirty = false;
        }
        if !event::poll(KEY_WAIT).context("reading the terminal")? {
            continue;
        }
        match event::read().context("reading the terminal")? {
            Event::Key(key) if key.kind == KeyEventKind::Press => match top.handle_key(key) {
                KeyAction::Quit => return Ok(()),
                KeyAction::Send(c) => {
                    if commands.send(c).is_err() {
                        bail!("the poller thread stopped");
                    }
                }
                KeyAction::None => {}
            },
            Event::Resize(..) => {}
            _ => continue,
        }
        dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn session(id: u32, rate: u64) -> Session {
        Session {
            id,
            user: Some("tester".into()),
            direction: "send".into(),
            files: 1,
            bytes: 32 << 20,
            total: 128 << 20,
            rate_bps: rate,
            target_bps: 200_000_000,
            min_bps: 0,
            policy: "fixed".into(),
            loss: 0.001,
            rtt_ms: 0.4,
            queue_ms: 0.1,
            state: "running".into(),
            ..Session::default()
        }
    }

    fn status(sessions: u64) -> Status {
        Status {
            version: "0.1.0".into(),
            pid: 4242,
            uptime_s: 65.0,
            sessions,
            sending: sessions,
            send_rate_bps: 199_800_000,
            ..Status::default()
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn history_keeps_one_minute() {
        let mut h = History::default();
        for t in 0..=90 {
            h.push(Sample {
                at: secs(t),
                rate_bps: t,
                target_bps: 0,
            });
        }
        let kept: Vec<u64> = h.samples().map(|s| s.rate_bps).collect();
        assert_eq!(kept.first(), Some(&30), "{kept:?}");
        assert_eq!(kept.last(), Some(&90));
        assert_eq!(kept.len(), 61);
    }

    #[test]
    fn history_is_bounded_at_short_intervals() {
        let mut h = History::default();
        for ms in 0..2_000 {
            h.push(Sample {
                at: Duration::from_millis(ms * 10),
                rate_bps: ms,
                target_bps: 0,
            });
        }
        assert_eq!(h.samples().count(), MAX_SAMPLES);
    }

    #[test]
    fn polls_feed_histories_and_forget_ended_sessions() {
        let mut top = Top::new(Path::new("/s"), secs(1));
        top.handle_poll(
            secs(0),
            Ok((status(2), vec![session(1, 10), session(2, 20)])),
        );
        top.handle_poll(
            secs(1),
            Ok((status(2), vec![session(1, 11), session(2, 21)])),
        );
        assert_eq!(top.history(1).unwrap().samples().count(), 2);
        top.handle_poll(secs(2), Ok((status(1), vec![session(2, 22)])));
        assert!(top.history(1).is_none(), "session 1 ended");
        let rates: Vec<u64> = top
            .history(2)
            .unwrap()
            .samples()
            .map(|s| s.rate_bps)
            .collect();
        assert_eq!(rates, [20, 21, 22]);
        // A failed poll keeps what was shown and adds no sample.
        top.handle_poll(secs(3), Err("cannot reach ferryd".into()));
        assert_eq!(top.history(2).unwrap().samples().count(), 3);
        assert_eq!(top.selected().map(|s| s.id), Some(2));
    }

    #[test]
    fn selection_follows_the_session_and_keys_act_on_it() {
        let mut top = Top::new(Path::new("/s"), secs(1));
        let key = |c| KeyEvent::from(c);
        assert_eq!(top.handle_key(key(KeyCode::Char('p'))), KeyAction::None);
        top.handle_poll(
            secs(0),
            Ok((status(3), vec![session(1, 0), session(2, 0), session(3, 0)])),
        );
        assert_eq!(
            top.selected().map(|s| s.id),
            Some(1),
            "the first by default"
        );
        top.handle_key(key(KeyCode::Down));
        top.handle_key(key(KeyCode::Down));
        top.handle_key(key(KeyCode::Down));
        assert_eq!(top.selected().map(|s| s.id), Some(3), "stops at the last");
        top.handle_key(key(KeyCode::Up));
        assert_eq!(top.selected().map(|s| s.id), Some(2));
        // Reordered: still session 2.
        top.handle_poll(
            secs(1),
            Ok((status(3), vec![session(2, 0), session(3, 0), session(1, 0)])),
        );
        assert_eq!(top.selected().map(|s| s.id), Some(2));
        assert_eq!(
            top.handle_key(key(KeyCode::Char('p'))),
            KeyAction::Send(Command::Pause { id: 2 })
        );
        assert_eq!(
            top.handle_key(key(KeyCode::Char('r'))),
            KeyAction::Send(Command::Resume { id: 2 })
        );
        // Session 2 ends: the selection stays on its row.
        top.handle_poll(secs(2), Ok((status(2), vec![session(3, 0), session(1, 0)])));
        assert_eq!(top.selected().map(|s| s.id), Some(3));
        assert_eq!(top.handle_key(key(KeyCode::Char('q'))), KeyAction::Quit);
        assert_eq!(top.handle_key(key(KeyCode::Esc)), KeyAction::Quit);
        assert_eq!(
            top.handle_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            KeyAction::Quit
        );
    }

    fn render(top: &Top, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| f.render_widget(top, f.area())).unwrap();
        buffer_text(terminal.backend().buffer())
    }

    #[test]
    fn the_view_shows_the_header_sessions_and_chart() {
        let mut top = Top::new(Path::new("/run/ferry/ctl.sock"), secs(1));
        for t in 0..10 {
            top.handle_poll(
                secs(t),
                Ok((status(1), vec![session(7, 190_000_000 + t * 1_000_000)])),
            );
        }
        let text = render(&top, 160, 40);
        assert!(text.contains("ferryd 0.1.0 (pid 4242)  up 1m 5s"), "{text}");
        assert!(
            text.contains("sessions 1 (1 sending, 0 receiving)"),
            "{text}"
        );
        assert!(text.contains("send 199.8 Mbit/s"), "{text}");
        let row = text
            .lines()
            .find(|l| l.contains("> 7 "))
            .unwrap_or_else(|| panic!("no selected row for session 7:\n{text}"));
        for cell in [
            "tester",
            "send",
            "fixed",
            "199 Mbit/s",
            "200 Mbit/s",
            "32.0 MiB/128.0 MiB",
            "25%",
            "0.10%",
            "0.4 ms",
            "running",
        ] {
            assert!(row.contains(cell), "no {cell:?} in {row:?}");
        }
        assert!(
            text.contains("session 7 rate, last 60 s (target 200 Mbit/s)"),
            "{text}"
        );
        assert!(text.contains("rate") && text.contains("target"), "{text}");
        assert!(
            text.chars().any(|c| ('\u{2801}'..='\u{28ff}').contains(&c)),
            "the chart draws a line:\n{text}"
        );
        assert!(text.contains("q quit"), "{text}");
    }

    #[test]
    fn an_unreachable_ferryd_is_shown_not_fatal() {
        let mut top = Top::new(Path::new("/s"), secs(1));
        top.handle_poll(secs(0), Err("cannot reach ferryd at /s: refused".into()));
        let text = render(&top, 120, 30);
        assert!(text.contains("waiting for ferryd's first answer"), "{text}");
        assert!(
            text.contains("cannot reach ferryd at /s: refused (retrying every 1 s)"),
            "{text}"
        );
        top.handle_poll(secs(1), Ok((status(1), vec![session(3, 5)])));
        top.handle_poll(secs(4), Err("gone".into()));
        let text = render(&top, 120, 30);
        assert!(
            text.contains("gone (retrying every 1 s; showing its answer from 3s ago)"),
            "{text}"
        );
        assert!(text.lines().any(|l| l.contains("> 3 ")), "{text}");
        // A tiny terminal does not panic.
        let _ = render(&top, 10, 3);
        let _ = render(&Top::new(Path::new("/s"), secs(1)), 1, 1);
    }

    #[test]
    fn intervals_parse() {
        assert_eq!(parse_interval("1s"), Ok(secs(1)));
        assert_eq!(parse_interval("2"), Ok(secs(2)));
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("0.25s"), Ok(Duration::from_millis(250)));
        for bad in ["", "fast", "50ms", "0", "-1s", "1e999"] {
            assert!(parse_interval(bad).is_err(), "{bad:?}");
        }
        assert_eq!(interval_text(secs(1)), "1 s");
        assert_eq!(interval_text(Duration::from_millis(500)), "500 ms");
    }
}
