//! Starting a child with ringloop's pipes, the standard streams as asked,
//! and no other fd of the parent's: glibc's `posix_spawn` (`dup2` onto
//! 0-2, then `closefrom(3)`) when it can say it all, else
//! `std::process::Command` (`close_range(CLOSE_RANGE_CLOEXEC)` between
//! fork and exec, then `pass_fds` made inheritable again).

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
    ///
    /// Given any, the child is started by fork + exec (`posix_spawn`, used
    /// otherwise, can't keep them): about twice the CPU a child.
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
///
/// The common case (no `pass_fds`) goes through glibc's `posix_spawn`
/// (a `clone(CLONE_VM | CLONE_VFORK)`: nothing of the parent is copied),
/// see [`posix`]; `pass_fds`, and a glibc that lacks a piece of it, take
/// `std::process::Command` with a `pre_exec` hook (fork + exec). Both give
/// the child the same thing: its three streams, every other fd closed
/// (but `pass_fds`), the directory, environment, process group and
/// session asked for, `SIGPIPE` at its default (std ignores it in the
/// parent) and the parent's signal mask (as std and CPython leave it).
pub(crate) fn spawn(
    program: &OsStr,
    args: &[OsString],
    opts: &mut SubprocessOptions,
) -> Result<Spawned> {
    let mut pipes: [Option<Pipe>; 3] = [None, None, None];
    let stdio = child_stdio(opts, &mut pipes)?;
    for &fd in &opts.pass_fds {
        if fd <= 2 || nix::fcntl::fcntl(borrow(fd)?, nix::fcntl::FcntlArg::F_GETFD).is_err() {
            return Err(Error::InvalidArgument(format!(
                "pass_fds: {fd} is not an open descriptor above 2"
            )));
        }
    }
    let env = opts.env.take();
    let cwd = opts.cwd.take();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if opts.pass_fds.is_empty() {
        let req = posix::Request {
            program,
            args,
            stdio: &stdio,
            env: env.as_deref(),
            cwd: cwd.as_deref(),
            process_group: opts.process_group,
            new_session: opts.start_new_session,
        };
        if let Some(pid) = posix::spawn(&req)? {
            count(0);
            // (The child's ends in `stdio` close here.)
            return Ok(Spawned { pid, pipes });
        }
    }
    let pid = fork_exec(program, args, stdio, env, cwd, opts)?;
    count(1);
    Ok(Spawned { pid, pipes })
}

/// Makes the child's ends of its three streams (`None`: the parent's own
/// stream), and puts the parent's ends of the pipes in `pipes`.
fn child_stdio(
    opts: &mut SubprocessOptions,
    pipes: &mut [Option<Pipe>; 3],
) -> Result<[Option<OwnedFd>; 3]> {
    let mut fds: [Option<OwnedFd>; 3] = [None, None, None];
    for (i, slot) in pipes.iter_mut().enumerate() {
        let spec = match i {
            0 => std::mem::take(&mut opts.stdin),
            1 => std::mem::take(&mut opts.stdout),
            _ => std::mem::take(&mut opts.stderr),
        };
        fds[i] = match spec {
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
            // The child's stdout, as an fd of its own (`dup2` takes any
            // two sources, but std's `Stdio` wants to own each).
            Stdio::Stdout if i == 2 => Some(match &fds[1] {
                Some(fd) => fd.try_clone()?,
                None => std::io::stdout().as_fd().try_clone_to_owned()?,
            }),
            Stdio::Stdout => {
                return Err(Error::InvalidArgument(
                    "Stdio::Stdout is only for stderr".into(),
                ));
            }
        };
    }
    Ok(fds)
}

/// The fallback: `std::process::Command` with a `pre_exec` hook, which
/// makes std fork and exec (what `posix_spawn` cannot say: `pass_fds`).
fn fork_exec(
    program: &OsStr,
    args: &[OsString],
    stdio: [Option<OwnedFd>; 3],
    env: Option<Vec<(OsString, OsString)>>,
    cwd: Option<PathBuf>,
    opts: &SubprocessOptions,
) -> Result<u32> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (i, fd) in stdio.into_iter().enumerate() {
        let stdio = match fd {
            Some(fd) => std::process::Stdio::from(fd),
            None => std::process::Stdio::inherit(),
        };
        match i {
            0 => cmd.stdin(stdio),
            1 => cmd.stdout(stdio),
            _ => cmd.stderr(stdio),
        };
    }
    if let Some(env) = env {
        cmd.env_clear();
        cmd.envs(env);
    }
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    if let Some(pg) = opts.process_group {
        cmd.process_group(pg);
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
    Ok(pid)
}

#[cfg(feature = "diagnostics")]
thread_local! {
    /// Children this thread started: through `posix_spawn`, through fork + exec.
    static SPAWNS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Counts a child started this way (0: `posix_spawn`, 1: fork + exec).
fn count(_how: usize) {
    #[cfg(feature = "diagnostics")]
    SPAWNS.with(|c| {
        let (p, f) = c.get();
        c.set(if _how == 0 { (p + 1, f) } else { (p, f + 1) });
    });
}

/// Children this thread started so far: through `posix_spawn`, through
/// fork + exec.
#[cfg(feature = "diagnostics")]
pub(crate) fn spawn_counts() -> (u64, u64) {
    SPAWNS.with(std::cell::Cell::get)
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

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod posix;
