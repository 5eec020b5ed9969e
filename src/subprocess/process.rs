//! The high-level child process (asyncio's `asyncio.subprocess.Process`):
//! a [`SubprocessTransport`] whose protocol feeds stream readers for
//! stdout and stderr and backs a stream writer for stdin, as asyncio's
//! `SubprocessStreamProtocol` does.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::rc::Rc;

use bytes::Bytes;

use super::{Stdio, SubprocessOptions, SubprocessProtocol, SubprocessTransport};
use crate::WriteBuf;
use crate::error::{Error, Result};
use crate::events::{AbstractEventLoop, get_running_loop};
use crate::streams::{StreamReader, StreamWriter, WriterHooks};

/// The protocol behind a [`Process`] (asyncio's `SubprocessStreamProtocol`).
struct StreamsProto {
    stdout: Option<StreamReader>,
    stderr: Option<StreamReader>,
    stdin: Rc<RefCell<Option<StreamWriter>>>,
    hooks: Option<WriterHooks>,
}

impl StreamsProto {
    fn reader(&self, fd: i32) -> Option<&StreamReader> {
        match fd {
            1 => self.stdout.as_ref(),
            2 => self.stderr.as_ref(),
            _ => None,
        }
    }
}

impl SubprocessProtocol for StreamsProto {
    fn connection_made(&mut self, t: SubprocessTransport) {
        if let Some(p) = t.get_pipe_transport(0) {
            let (w, hooks) = StreamWriter::with_hooks(p);
            *self.stdin.borrow_mut() = Some(w);
            self.hooks = Some(hooks);
        }
        for fd in [1, 2] {
            if let Some(r) = self.reader(fd) {
                r.set_transport(t.get_pipe_transport(fd));
            }
        }
    }
    fn pipe_data_received(&mut self, fd: i32, data: &[u8]) {
        if let Some(r) = self.reader(fd) {
            r.feed_data(data);
        }
    }
    fn pipe_connection_lost(&mut self, fd: i32, exc: Option<Error>) {
        if fd == 0 {
            if let Some(h) = &self.hooks {
                h.lost(exc);
            }
            return;
        }
        if let Some(r) = self.reader(fd) {
            match exc {
                Some(e) => r.set_exception(e),
                None => r.feed_eof(),
            }
            r.set_transport(None);
        }
    }
    fn pause_writing(&mut self) {
        if let Some(h) = &self.hooks {
            h.pause();
        }
    }
    fn resume_writing(&mut self) {
        if let Some(h) = &self.hooks {
            h.resume();
        }
    }
}

/// A child process with stream pipes. Equivalent to asyncio's
/// `asyncio.subprocess.Process`.
///
/// Dropping it neither kills the child nor leaves a zombie: the loop
/// reaps the child when it exits (call [`kill`](Self::kill) first to end
/// it). Mind asyncio's warning: with pipes, read what the child writes
/// (or use [`communicate`](Self::communicate)) before
/// [`wait`](Self::wait), or a child that fills a pipe never exits.
pub struct Process {
    transport: SubprocessTransport,
    /// The child's stdin, when it is [`Stdio::Pipe`].
    pub stdin: Option<StreamWriter>,
    /// The child's stdout, when it is [`Stdio::Pipe`].
    pub stdout: Option<StreamReader>,
    /// The child's stderr, when it is [`Stdio::Pipe`].
    pub stderr: Option<StreamReader>,
}

impl Process {
    /// The child's process id. Equivalent to `Process.pid`.
    pub fn pid(&self) -> u32 {
        self.transport.get_pid()
    }

    /// `None` while the child runs; then its exit code, or `-N` if signal
    /// N ended it. Equivalent to `Process.returncode`.
    pub fn returncode(&self) -> Option<i32> {
        self.transport.get_returncode()
    }

    /// The low-level transport.
    pub fn transport(&self) -> &SubprocessTransport {
        &self.transport
    }

    /// Waits for the child to exit; its returncode. Equivalent to
    /// `Process.wait`.
    pub async fn wait(&self) -> i32 {
        self.transport.wait().await
    }

    /// Sends `input` (if any) to stdin and closes it, reads stdout and
    /// stderr to their ends, and waits for the child: `(stdout, stderr)`,
    /// each `None` unless it is a pipe. All three go on at once, so
    /// outputs larger than a pipe's buffer never deadlock. A broken pipe
    /// or reset on stdin (the child stopped reading) is ignored, as in
    /// asyncio. Equivalent to `Process.communicate`.
    ///
    /// # Errors
    ///
    /// A read error on stdout or stderr; [`Error::Closed`] if the loop
    /// is gone.
    pub async fn communicate(
        &mut self,
        input: Option<impl Into<WriteBuf>>,
    ) -> Result<(Option<Bytes>, Option<Bytes>)> {
        let lp = self.transport.get_loop();
        let input = input.map(Into::into);
        let stdin = self.stdin.take().map(|w| {
            lp.create_task(async move {
                let fed = match input {
                    Some(data) => w.write(data),
                    None => Ok(()),
                };
                let r = match fed {
                    Ok(()) => w.drain().await,
                    Err(e) => Err(e),
                };
                w.close();
                match r {
                    Err(e) if !ignorable_stdin_error(&e) => {
                        log::debug!("ringloop: communicate: stdin: {e}");
                    }
                    _ => {}
                }
            })
        });
        let read_all =
            |r: Option<StreamReader>| r.map(|r| lp.create_task(async move { r.read(-1).await }));
        let out = read_all(self.stdout.clone());
        let err = read_all(self.stderr.clone());
        if let Some(t) = stdin {
            t.await?;
        }
        let out = match out {
            Some(t) => Some(t.await??),
            None => None,
        };
        let err = match err {
            Some(t) => Some(t.await??),
            None => None,
        };
        self.wait().await;
        Ok((out, err))
    }

    /// Sends signal `sig`. Equivalent to `Process.send_signal`.
    ///
    /// # Errors
    ///
    /// As [`SubprocessTransport::send_signal`].
    pub fn send_signal(&self, sig: i32) -> Result<()> {
        self.transport.send_signal(sig)
    }

    /// SIGTERM. Equivalent to `Process.terminate`.
    ///
    /// # Errors
    ///
    /// As [`SubprocessTransport::send_signal`].
    pub fn terminate(&self) -> Result<()> {
        self.transport.terminate()
    }

    /// SIGKILL. Equivalent to `Process.kill`.
    ///
    /// # Errors
    ///
    /// As [`SubprocessTransport::send_signal`].
    pub fn kill(&self) -> Result<()> {
        self.transport.kill()
    }
}

/// The errors asyncio's `communicate` ignores on stdin: the child closed
/// it (broken pipe, reset) before reading everything.
fn ignorable_stdin_error(e: &Error) -> bool {
    match e {
        Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        Error::Closed(_) => true,
        _ => false,
    }
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<Process pid={} returncode={:?}>",
            self.pid(),
            self.returncode()
        )
    }
}

async fn start(program: &OsStr, args: Vec<OsString>, opts: SubprocessOptions) -> Result<Process> {
    let lp = get_running_loop()?;
    let limit = opts.limit;
    let reader = |s: &Stdio| -> Result<Option<StreamReader>> {
        Ok(match s {
            Stdio::Pipe => Some(StreamReader::new(limit)?),
            _ => None,
        })
    };
    let stdout = reader(&opts.stdout)?;
    let stderr = reader(&opts.stderr)?;
    let stdin = Rc::new(RefCell::new(None));
    let proto = StreamsProto {
        stdout: stdout.clone(),
        stderr: stderr.clone(),
        stdin: stdin.clone(),
        hooks: None,
    };
    let transport = lp
        .subprocess_exec(move || proto, program, args, opts)
        .await?;
    let stdin = stdin.borrow_mut().take();
    Ok(Process {
        transport,
        stdin,
        stdout,
        stderr,
    })
}

/// Starts `program` with `args`; its streams as `opts` says.
///
/// Equivalent to `asyncio.create_subprocess_exec(program, *args, ...)`,
/// with the keyword arguments in [`SubprocessOptions`]. Note the default:
/// all three streams are pipes here (asyncio inherits them unless told);
/// pass [`Stdio::Inherit`] for asyncio's `None`.
///
/// # Errors
///
/// [`Error::InvalidState`] outside a running loop; [`Error::Io`] if the
/// program cannot be started (`NotFound` for a missing program).
pub async fn create_subprocess_exec<I, S>(
    program: impl AsRef<OsStr>,
    args: I,
    opts: SubprocessOptions,
) -> Result<Process>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    start(program.as_ref(), args, opts).await
}

/// Runs `cmd` through `/bin/sh -c`; its streams as `opts` says.
///
/// Equivalent to `asyncio.create_subprocess_shell(cmd, ...)`. Quote what
/// goes into `cmd` (shell injection is the caller's to prevent).
///
/// # Errors
///
/// As [`create_subprocess_exec`].
pub async fn create_subprocess_shell(
    cmd: impl AsRef<OsStr>,
    opts: SubprocessOptions,
) -> Result<Process> {
    let args = vec![OsString::from("-c"), cmd.as_ref().to_owned()];
    start(OsStr::new("/bin/sh"), args, opts).await
}
