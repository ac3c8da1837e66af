//! The io_uring fan-out writer (`--fanout-io`).
//!
//! A directly served SSE subscriber that is idle — one live topic, nothing
//! queued, nothing being replayed — *parks* its connection here: the task
//! serving it stops writing and publishes the id of the next message it
//! expects ([`Link`]). [`crate::hub::Hub::dispatch`] then hands that message
//! to this writer instead of the subscriber's queue: one job per message,
//! holding the message's HTTP chunk once (`<len>\r\n<frame>\r\n`, shared by
//! every subscriber: no per-subscriber copy) and the parked connections.
//! A dedicated thread submits the job's sends in batches of [`BATCH`]
//! SQEs per `io_uring_enter`; each send is `MSG_DONTWAIT`, so the kernel
//! completes it inside the submit and the thread reaps every completion
//! before the next batch.
//!
//! A send that wrote everything leaves the connection parked, expecting the
//! next id. Anything else hands the connection back to its task (which
//! resumes the ordinary path: the subscriber's bounded queue and vectored
//! writes on the socket): a partial write or `EAGAIN` leaves the unwritten
//! rest of the chunk for the task to write first, so order holds and nothing
//! is lost; an error leaves the whole chunk, whose write then fails in the
//! task, which ends the stream. A connection whose send is in flight cannot
//! be taken back or closed until its completion is reaped, so no SQE ever
//! refers to a closed socket. A message that does not follow the parked id,
//! or that arrives while the writer is still sending earlier messages, goes
//! to the queue as before and the task takes the connection back: under
//! load subscribers leave the ring for the queue path, which batches frames.
//!
//! [`choose`] picks the path at start: `auto` uses io_uring where a ring can
//! be set up and entered (kernels without it, `io_uring_disabled`, seccomp
//! refuse it) and the epoll path otherwise; `uring` refuses to start without
//! it; `epoll` never tries it.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};

use bytes::{BufMut, Bytes, BytesMut};
use io_uring::{opcode, types, IoUring};

use crate::hub::ConnectionControl;
use crate::message::{Epoch, Message, MessageId, SseEventNames};
use crate::metrics::{Metrics, Transport};
use crate::state::AppState;

/// Sends submitted per `io_uring_enter` (and the ring's size).
pub const BATCH: usize = 256;

/// How SSE fan-out writes reach the sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FanoutIo {
    /// io_uring where the kernel allows it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring; the server does not start without it.
    Uring,
    /// One vectored write per subscriber from its own task (epoll readiness).
    Epoll,
}

/// The path that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanoutPath {
    Uring,
    Epoll,
}

impl FanoutPath {
    pub fn as_str(self) -> &'static str {
        match self {
            FanoutPath::Uring => "uring",
            FanoutPath::Epoll => "epoll",
        }
    }
}

/// What [`choose`] decided: the path, the ring it runs on, and why `auto`
/// fell back (if it did).
#[derive(Debug)]
pub struct Choice<R> {
    pub path: FanoutPath,
    pub ring: Option<R>,
    pub fallback: Option<io::Error>,
}

/// Picks the fan-out path for `requested`, setting a ring up with `setup`
/// unless epoll was asked for. Only a forced `uring` fails.
pub fn choose<R>(
    requested: FanoutIo,
    setup: impl FnOnce() -> io::Result<R>,
) -> io::Result<Choice<R>> {
    let epoll = |fallback| Choice {
        path: FanoutPath::Epoll,
        ring: None,
        fallback,
    };
    match requested {
        FanoutIo::Epoll => Ok(epoll(None)),
        FanoutIo::Auto | FanoutIo::Uring => match setup() {
            Ok(ring) => Ok(Choice {
                path: FanoutPath::Uring,
                ring: Some(ring),
                fallback: None,
            }),
            Err(error) if requested == FanoutIo::Auto => Ok(epoll(Some(error))),
            Err(error) => Err(error),
        },
    }
}

/// A ring this process may use: set up, with `IORING_OP_SEND`, and entered
/// once (a NOP), so a refusal at `io_uring_enter` (seccomp) shows here.
pub fn setup_ring() -> io::Result<IoUring> {
    let mut ring = IoUring::new(BATCH as u32)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    if !probe.is_supported(opcode::Send::CODE) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel's io_uring has no IORING_OP_SEND",
        ));
    }
    let nop = opcode::Nop::new().build().user_data(u64::MAX);
    // SAFETY: a NOP refers to no memory.
    #[allow(unsafe_code)] // pushing an SQE: io_uring's API is unsafe by nature
    let pushed = unsafe { ring.submission().push(&nop) };
    pushed.map_err(|_| io::Error::other("the new ring's submission queue is full"))?;
    ring.submit_and_wait(1)?;
    let result = ring.completion().next().map(|c| c.result());
    match result {
        Some(0) => Ok(ring),
        Some(error) => Err(io::Error::from_raw_os_error(-error)),
        None => Err(io::Error::other("the ring did not complete a NOP")),
    }
}

/// Who writes to a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Its task (the ordinary path).
    Task,
    /// The writer, for the message `next`.
    Parked,
    /// The writer; a send is in flight.
    InFlight,
    /// The connection is closing: nobody.
    Closed,
}

/// Bytes a send left unwritten, for the task to write before anything else.
#[derive(Debug)]
pub struct Rest {
    pub message: Arc<Message>,
    pub bytes: Bytes,
}

/// One directly served SSE connection as the writer sees it.
#[derive(Debug)]
pub struct Link {
    fd: RawFd,
    state: Mutex<LinkState>,
}

#[derive(Debug)]
struct LinkState {
    mode: Mode,
    names: SseEventNames,
    /// The id of the next message the connection is to get.
    next: MessageId,
    /// The task asked for the connection back while a send was in flight.
    wanted: bool,
    rest: Option<Box<Rest>>,
}

/// What the task gets back with its connection: the last message handed to
/// the connection, and what of it is still to be written.
#[derive(Debug)]
pub struct Returned {
    pub last: MessageId,
    pub rest: Option<Box<Rest>>,
}

impl Link {
    /// A link for the socket `fd`, which its task owns and keeps open until
    /// [`Link::close`] succeeded.
    pub fn new(fd: RawFd) -> Link {
        Link {
            fd,
            state: Mutex::new(LinkState {
                mode: Mode::Task,
                names: SseEventNames::Published,
                next: MessageId {
                    epoch: Epoch(0),
                    seq: 0,
                },
                wanted: false,
                rest: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The task hands its idle connection to the writer, which is to write
    /// the message `next` on (framed with `names`). False once closed.
    pub fn park(&self, next: MessageId, names: SseEventNames) -> bool {
        let mut state = self.lock();
        if state.mode != Mode::Task {
            return false;
        }
        *state = LinkState {
            mode: Mode::Parked,
            names,
            next,
            wanted: false,
            rest: None,
        };
        true
    }

    /// Dispatch: takes message `id` for the writer if the connection is
    /// parked waiting for exactly it and the writer `take`s work (the
    /// frame's names returned). A parked connection offered another id, or
    /// offered one while the writer is busy, goes back to its task (the
    /// message is queued, which wakes the task).
    pub fn claim(&self, id: MessageId, take: bool) -> Option<SseEventNames> {
        let mut state = self.lock();
        match state.mode {
            Mode::Parked if take && state.next == id => {
                state.mode = Mode::InFlight;
                Some(state.names)
            }
            Mode::Parked => {
                state.mode = Mode::Task;
                None
            }
            Mode::Task | Mode::InFlight | Mode::Closed => None,
        }
    }

    /// The writer reaped the send of `message` (`chunk`): `result` bytes
    /// written, or `-errno`. True when the connection went back to its task
    /// (whom the caller must then wake).
    fn complete(&self, message: &Arc<Message>, chunk: &Bytes, result: i32) -> bool {
        let mut state = self.lock();
        debug_assert_eq!(state.mode, Mode::InFlight);
        state.next = MessageId {
            epoch: message.id.epoch,
            seq: message.id.seq.saturating_add(1),
        };
        let written = usize::try_from(result).unwrap_or(0).min(chunk.len());
        if written < chunk.len() {
            state.rest = Some(Box::new(Rest {
                message: message.clone(),
                bytes: chunk.slice(written..),
            }));
        }
        if state.rest.is_some() || state.wanted {
            state.mode = Mode::Task;
            true
        } else {
            state.mode = Mode::Parked;
            false
        }
    }

    /// The task takes its connection back: `None` while a send is in flight
    /// (wait for the connection's change, then ask again).
    pub fn take_back(&self) -> Option<Returned> {
        let mut state = self.lock();
        match state.mode {
            Mode::InFlight => {
                state.wanted = true;
                None
            }
            Mode::Parked | Mode::Task => {
                state.mode = Mode::Task;
                Some(Returned {
                    last: state.last(),
                    rest: state.rest.take(),
                })
            }
            Mode::Closed => None,
        }
    }

    /// The last message handed to the connection (by the task before it
    /// parked, or by the writer since).
    pub fn last(&self) -> MessageId {
        self.lock().last()
    }

    /// Whether the task writes (the writer gave the connection back).
    pub fn is_task(&self) -> bool {
        self.lock().mode == Mode::Task
    }

    /// Whether a send is in flight.
    pub fn in_flight(&self) -> bool {
        self.lock().mode == Mode::InFlight
    }

    /// Closes the link for good: `None` while a send is in flight (wait for
    /// the connection's change, then ask again), else the last message
    /// handed to the connection, so its stream counts what the writer wrote.
    /// The socket may be closed once this returned `Some`.
    pub fn close(&self) -> Option<MessageId> {
        let mut state = self.lock();
        if state.mode == Mode::InFlight {
            state.wanted = true;
            return None;
        }
        state.mode = Mode::Closed;
        state.rest = None;
        Some(state.last())
    }
}

impl LinkState {
    /// The last message handed to the connection.
    fn last(&self) -> MessageId {
        MessageId {
            epoch: self.next.epoch,
            seq: self.next.seq.saturating_sub(1),
        }
    }
}

/// One message for the parked connections that take it.
#[derive(Debug)]
pub struct Job {
    message: Arc<Message>,
    chunk: Bytes,
    /// The frame's length (what a delivery counts in bytes).
    frame_len: usize,
    targets: Vec<Arc<ConnectionControl>>,
}

impl Job {
    /// A job for `message` framed with `names`, without targets yet.
    pub fn new(message: &Arc<Message>, names: SseEventNames) -> Job {
        let frame = message.sse_frame(names);
        Job {
            message: message.clone(),
            chunk: chunk(&frame),
            frame_len: frame.len(),
            targets: Vec::new(),
        }
    }

    /// Adds a connection whose link claimed the message.
    pub fn push(&mut self, connection: Arc<ConnectionControl>) {
        self.targets.push(connection);
    }
}

/// `frame` as one HTTP/1.1 chunk: `<len in hex>\r\n<frame>\r\n`.
pub fn chunk(frame: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(frame.len() + 20);
    out.put_slice(format!("{:x}\r\n", frame.len()).as_bytes());
    out.put_slice(frame);
    out.put_slice(b"\r\n");
    out.freeze()
}

/// The writer: its thread and the queue of jobs to it.
#[derive(Debug)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    /// Jobs submitted and not finished: while one is, the writer is behind
    /// and new messages take the queue path (which batches under load).
    pending: Arc<AtomicUsize>,
    /// Set when the ring failed at run time: no more claims, epoll from then on.
    broken: Arc<AtomicBool>,
}

impl Writer {
    /// Starts the writer's thread on `ring`; deliveries are accounted in `state`.
    pub fn start(ring: IoUring, state: Weak<AppState>) -> io::Result<Writer> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let broken = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicUsize::new(0));
        let (thread_broken, thread_pending) = (broken.clone(), pending.clone());
        std::thread::Builder::new()
            .name("fanout-uring".into())
            .spawn(move || run(ring, &rx, &state, &thread_broken, &thread_pending))?;
        Ok(Writer {
            jobs,
            pending,
            broken,
        })
    }

    /// Whether dispatch may park messages here.
    pub fn usable(&self) -> bool {
        !self.broken.load(Ordering::Acquire)
    }

    /// Whether the writer has finished every job (takes a new one at once).
    pub fn idle(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// Queues `job`; its connections return to their tasks if the writer is gone.
    pub fn submit(&self, job: Job) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.broken.store(true, Ordering::Release);
            give_back(&job, -libc::EPIPE);
        }
    }
}

/// Completes every target of `job` with `result` (nothing sent).
fn give_back(job: &Job, result: i32) {
    for target in &job.targets {
        finish(target, job, result);
    }
}

/// How a batch's sends ended.
#[derive(Debug, Default)]
struct Outcomes {
    written: u64,
    partial: u64,
    again: u64,
    error: u64,
}

impl Outcomes {
    fn count(&mut self, result: i32, len: usize) {
        match usize::try_from(result) {
            Ok(written) if written >= len => self.written += 1,
            Ok(_) => self.partial += 1,
            Err(_) if result == -libc::EAGAIN => self.again += 1,
            Err(_) => self.error += 1,
        }
    }

    fn record(&self, metrics: &Metrics) {
        metrics.uring_sends("written", self.written);
        metrics.uring_sends("partial", self.partial);
        metrics.uring_sends("again", self.again);
        metrics.uring_sends("error", self.error);
    }
}

/// Completes `target`'s send of `job` (`result`: bytes written or
/// `-errno`), waking its task if it takes the connection back.
fn finish(target: &ConnectionControl, job: &Job, result: i32) {
    if let Some(link) = target.link() {
        if link.complete(&job.message, &job.chunk, result) {
            target.changed();
        }
    }
}

fn run(
    mut ring: IoUring,
    jobs: &mpsc::Receiver<Job>,
    state: &Weak<AppState>,
    broken: &AtomicBool,
    pending: &AtomicUsize,
) {
    let mut results = vec![0i32; BATCH];
    while let Ok(job) = jobs.recv() {
        send_job(&mut ring, &job, state, broken, &mut results);
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sends `job` batch by batch and completes every target.
fn send_job(
    ring: &mut IoUring,
    job: &Job,
    state: &Weak<AppState>,
    broken: &AtomicBool,
    results: &mut [i32],
) {
    if broken.load(Ordering::Acquire) {
        give_back(job, -libc::EIO);
        return;
    }
    let state = state.upgrade();
    for group in job.targets.chunks(BATCH) {
        if let Err(error) = send_batch(ring, &job.chunk, group, results) {
            // The sends of this batch were not submitted (or their
            // completions are lost): nothing refers to the sockets any
            // more once the ring is dropped with the thread; until then
            // no new job is taken.
            tracing::warn!(%error, "io_uring fan-out failed; using the epoll path from now on");
            broken.store(true, Ordering::Release);
            results[..group.len()].fill(-libc::EIO);
        }
        let mut outcomes = Outcomes::default();
        for (target, &result) in group.iter().zip(results.iter()) {
            finish(target, job, result);
            outcomes.count(result, job.chunk.len());
        }
        if let Some(state) = &state {
            for _ in 0..outcomes.written {
                state.delivered(Transport::Sse, &job.message, job.frame_len, 0);
            }
            outcomes.record(&state.metrics);
        }
    }
}

/// Sends `chunk` on every connection of `group` (one SQE each, one submit),
/// waits for all completions and stores each result in `results`.
fn send_batch(
    ring: &mut IoUring,
    chunk: &Bytes,
    group: &[Arc<ConnectionControl>],
    results: &mut [i32],
) -> io::Result<()> {
    let len = u32::try_from(chunk.len()).map_err(|_| io::Error::other("chunk above 4 GiB"))?;
    let mut pushed = 0;
    {
        let mut sq = ring.submission();
        for (i, target) in group.iter().enumerate() {
            let Some(link) = target.link() else {
                results[i] = -libc::EBADF;
                continue;
            };
            let send = opcode::Send::new(types::Fd(link.fd), chunk.as_ptr(), len)
                .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                .build()
                .user_data(i as u64);
            // SAFETY: the chunk outlives the send (the job holds it until
            // every completion of the batch is reaped below), and the socket
            // stays open while its link is in flight.
            #[allow(unsafe_code)] // pushing an SQE: io_uring's API is unsafe by nature
            let queued = unsafe { sq.push(&send) };
            if queued.is_err() {
                return Err(io::Error::other("submission queue full"));
            }
            pushed += 1;
        }
    }
    let mut reaped = 0;
    while reaped < pushed {
        match ring.submit_and_wait(pushed - reaped) {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
        for completion in ring.completion() {
            let i = usize::try_from(completion.user_data()).unwrap_or(usize::MAX);
            if let Some(slot) = results.get_mut(i) {
                *slot = completion.result();
                reaped += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> MessageId {
        MessageId {
            epoch: Epoch(7),
            seq,
        }
    }

    fn message(seq: u64) -> Arc<Message> {
        Arc::new(Message::new(
            Arc::from("t"),
            id(seq),
            None,
            Bytes::from_static(b"hello"),
            0,
            None,
        ))
    }

    #[test]
    fn auto_falls_back_when_the_ring_is_refused_and_uring_does_not() {
        let refused = || -> io::Result<()> { Err(io::Error::from_raw_os_error(libc::EPERM)) };
        let auto = choose(FanoutIo::Auto, refused).expect("auto never fails");
        assert_eq!(auto.path, FanoutPath::Epoll);
        assert_eq!(
            auto.fallback.map(|e| e.raw_os_error()),
            Some(Some(libc::EPERM))
        );
        let forced = choose(FanoutIo::Uring, refused).expect_err("forced uring fails");
        assert_eq!(forced.raw_os_error(), Some(libc::EPERM));
        let mut tried = false;
        let epoll = choose(FanoutIo::Epoll, || {
            tried = true;
            Ok(())
        })
        .expect("epoll");
        assert!(!tried, "epoll never sets a ring up");
        assert_eq!(epoll.path, FanoutPath::Epoll);
        let works = choose(FanoutIo::Auto, || Ok(())).expect("auto");
        assert_eq!((works.path, works.ring), (FanoutPath::Uring, Some(())));
    }

    #[test]
    fn chunks_are_http_chunks() {
        assert_eq!(&chunk(&[b'x'; 26])[..4], b"1a\r\n");
        assert_eq!(&chunk(b"ab")[..], b"2\r\nab\r\n");
    }

    #[test]
    fn a_link_takes_only_the_next_id_and_hands_back_what_it_did_not_write() {
        let link = Link::new(-1);
        assert_eq!(link.claim(id(1), true), None, "not parked");
        assert!(link.park(id(5), SseEventNames::Topic));
        assert_eq!(link.claim(id(5), true), Some(SseEventNames::Topic));
        assert!(link.in_flight());
        assert!(link.take_back().is_none(), "in flight");
        assert_eq!(link.close(), None, "in flight");
        let chunk = chunk(b"hello");
        // Wanted back while in flight: returned after a whole write.
        assert!(link.complete(&message(5), &chunk, chunk.len() as i32));
        let back = link.take_back().expect("returned");
        assert_eq!(back.last, id(5));
        assert!(back.rest.is_none());

        // A whole write keeps it parked, for the next id only.
        assert!(link.park(id(6), SseEventNames::Published));
        assert_eq!(link.claim(id(6), true), Some(SseEventNames::Published));
        assert!(!link.complete(&message(6), &chunk, chunk.len() as i32));
        assert_eq!(link.claim(id(8), true), None, "a gap goes to the task");
        assert!(link.is_task());
        assert_eq!(link.take_back().expect("task").last, id(6));

        // Offered its next id while the writer is busy: back to the task too.
        assert!(link.park(id(7), SseEventNames::Published));
        assert_eq!(link.claim(id(7), false), None, "the writer is behind");
        assert!(link.is_task());
        assert_eq!(link.take_back().expect("task").last, id(6));

        // A partial write leaves the rest; EAGAIN leaves everything.
        for (result, rest) in [(3, &chunk[3..]), (-libc::EAGAIN, &chunk[..])] {
            assert!(link.park(id(7), SseEventNames::Published));
            assert!(link.claim(id(7), true).is_some());
            assert!(link.complete(&message(7), &chunk, result));
            let back = link.take_back().expect("returned");
            assert_eq!(back.last, id(7));
            assert_eq!(&back.rest.expect("rest").bytes[..], rest);
        }
        assert_eq!(link.close(), Some(id(7)), "what the writer last took");
        assert!(!link.park(id(8), SseEventNames::Published), "closed");
        assert_eq!(link.claim(id(8), true), None);
    }
}
