//! Starting a child: `std::process::Command` with ringloop's pipes, the
//! standard streams as asked, and every other fd close-on-exec in the
//! child (`close_range(CLOSE_RANGE_CLOEXEC)` between fork and exec, then
//! `pass_fds` made inheritable again).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use nix::fcntl::OFlag;

use crate::error::{Error, Result};
use crate::pipes::Pipe;

/// Where a child's standard stream goes (asyncio's `PIPE`, `None`,
/// `DEVNULL`, a file descriptor, `STDOUT`).
#[derive(Debug, Default)]
pub enum Stdio {
    /// A pipe to the parent: a transport on the low level, a stream on the
    /// high level (asyncio's `subprocess.PIPE`).
    #[default]
    Pipe,
    /// The parent's own stream (asyncio's `None`).
    Inherit,
    /// `/dev/null` (asyncio's `subprocess.DEVNULL`).
    DevNull,
    /// An fd of the caller's (a file, a socket, another child's pipe),
    /// which moves into the call and is closed in the parent once the
    /// child has it.
    Fd(OwnedFd),
    /// stderr only: the same as stdout (asyncio's `subprocess.STDOUT`).
    Stdout,
}

/// How to start a child (the keyword arguments of asyncio's
/// `subprocess_exec` / `create_subprocess_exec`).
///
/// `Default`: all three streams are pipes (asyncio's low-level default;
/// its `create_subprocess_exec` inherits them unless told: pass
/// [`Stdio::Inherit`] for that), the parent's environment and directory,
/// no extra fds, the parent's process group and session, and the
/// streams' [`DEFAULT_LIMIT`](crate::DEFAULT_LIMIT).
#[derive(Debug)]
pub struct SubprocessOptions {
    /// The child's fd 0.
    pub stdin: Stdio,
    /// The child's fd 1.
    pub stdout: Stdio,
    /// The child's fd 2 ([`Stdio::Stdout`] merges it into stdout).
    pub stderr: Stdio,
    /// The child's whole environment (`None`: the parent's).
    pub env: Option<Vec<(OsString, OsString)>>,
    /// The child's working directory (`None`: the parent's).
    pub cwd: Option<PathBuf>,
    /// Fds that stay open in the child, at the same numbers; every other
    /// fd above 2 is closed on exec (asyncio's `close_fds=True`).
    pub pass_fds: Vec<RawFd>,
    /// `Some(0)`: a new process group led by the child; `Some(pgid)`: join
    /// that group (asyncio's `process_group`).
    pub process_group: Option<i32>,
    /// A new session (`setsid`; asyncio's `start_new_session`).
    pub start_new_session: bool,
    /// The buffer limit of the high-level API's stream readers.
    pub limit: usize,
}

impl Default for SubprocessOptions {
    fn default() -> Self {
        SubprocessOptions {
            stdin: Stdio::Pipe,
            stdout: Stdio::Pipe,
            stderr: Stdio::Pipe,
            env: None,
            cwd: None,
            pass_fds: Vec::new(),
            process_group: None,
            start_new_session: false,
            limit: crate::streams::DEFAULT_LIMIT,
        }
    }
}

/// A started child: its pid and the parent's ends of its pipes (fd 0's
/// write end, fd 1's and fd 2's read ends).
pub(crate) struct Spawned {
    pub(crate) pid: u32,
    pub(crate) pipes: [Option<Pipe>; 3],
}

/// A pipe for a child's stream: the parent's end non-blocking, the
/// child's blocking (as programs expect); both close-on-exec here (the
/// child's becomes fd 0–2 by `dup2`, which clears the flag).
fn child_pipe(parent_reads: bool) -> Result<(Pipe, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let (ours, theirs) = if parent_reads { (r, w) } else { (w, r) };
    Ok((Pipe::from_owned(ours)?, theirs))
}

/// Starts `program` with `args` as `opts` says (the fds in `opts` move
/// into the child).
pub(crate) fn spawn(
    program: &OsStr,
    args: &[OsString],
    opts: &mut SubprocessOptions,
) -> Result<Spawned> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let mut pipes: [Option<Pipe>; 3] = [None, None, None];
    // The child's stdout as an fd, for a stderr merged into it.
    let mut child_stdout: Option<OwnedFd> = None;
    for (i, slot) in pipes.iter_mut().enumerate() {
        let spec = match i {
            0 => std::mem::take(&mut opts.stdin),
            1 => std::mem::take(&mut opts.stdout),
            _ => std::mem::take(&mut opts.stderr),
        };
        let theirs: Option<OwnedFd> = match spec {
            Stdio::Pipe => {
                let (ours, theirs) = child_pipe(i != 0)?;
                *slot = Some(ours);
                Some(theirs)
            }
            Stdio::Inherit => None,
            Stdio::DevNull => {
                let f = std::fs::OpenOptions::new()
                    .read(i == 0)
                    .write(i != 0)
                    .open("/dev/null")?;
                Some(OwnedFd::from(f))
            }
            Stdio::Fd(fd) => Some(fd),
            Stdio::Stdout if i == 2 => match &child_stdout {
                Some(fd) => Some(fd.try_clone()?),
                None => unreachable!("stdout is set up first"),
            },
            Stdio::Stdout => {
                return Err(Error::InvalidArgument(
                    "Stdio::Stdout is only for stderr".into(),
                ));
            }
        };
        if i == 1 && child_stdout.is_none() {
            child_stdout = Some(match &theirs {
                Some(fd) => fd.try_clone()?,
                None => std::io::stdout().as_fd().try_clone_to_owned()?,
            });
        }
        let stdio = match theirs {
            Some(fd) => std::process::Stdio::from(fd),
            None => std::process::Stdio::inherit(),
        };
        match i {
            0 => cmd.stdin(stdio),
            1 => cmd.stdout(stdio),
            _ => cmd.stderr(stdio),
        };
    }
    drop(child_stdout);
    if let Some(env) = opts.env.take() {
        cmd.env_clear();
        cmd.envs(env);
    }
    if let Some(cwd) = opts.cwd.take() {
        cmd.current_dir(cwd);
    }
    if let Some(pg) = opts.process_group {
        cmd.process_group(pg);
    }
    for &fd in &opts.pass_fds {
        if fd <= 2 || nix::fcntl::fcntl(borrow(fd)?, nix::fcntl::FcntlArg::F_GETFD).is_err() {
            return Err(Error::InvalidArgument(format!(
                "pass_fds: {fd} is not an open descriptor above 2"
            )));
        }
    }
    let pass = opts.pass_fds.clone();
    let session = opts.start_new_session;
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: setsid, close_range and fcntl
    // are plain syscalls; it allocates nothing (`pass` was built before).
    unsafe {
        cmd.pre_exec(move || {
            if session && libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Every fd above the standard three closes on exec...
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // ...but the ones asked for.
            for &fd in &pass {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    // (The child's ends, held by `cmd`, close here; std's `Child` neither
    // waits nor kills on drop: the loop's watch reaps it.)
    drop(child);
    drop(cmd);
    Ok(Spawned { pid, pipes })
}

/// A raw fd the caller names, for a `fcntl` check (never kept).
fn borrow(fd: RawFd) -> Result<std::os::fd::BorrowedFd<'static>> {
    if fd < 0 {
        return Err(Error::InvalidArgument(format!("invalid fd {fd}")));
    }
    // SAFETY: used for one F_GETFD right away; F_GETFD on a closed fd
    // fails with EBADF, which is what the check asks.
    Ok(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
}
