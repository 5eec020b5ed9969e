//! Pipe transports and child processes (asyncio's `connect_read_pipe` /
//! `connect_write_pipe`, `subprocess_exec`, `create_subprocess_exec`), on
//! both backends, with real programs (`sh`, `cat`, `echo`, `head`).

mod common;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use common::child::ChildTest;
use ringloop::prelude::*;
use ringloop::{
    ExtraInfo, Pipe, Protocol, Stdio, SubprocessOptions, SubprocessProtocol, SubprocessTransport,
    Transport, create_subprocess_exec, create_subprocess_shell,
};

const LIMIT: Duration = Duration::from_secs(60);

/// What a pipe protocol saw, in order.
#[derive(Default)]
struct Log {
    events: Vec<String>,
    data: Vec<u8>,
    transport: Option<Transport>,
}

struct Recorder(Rc<RefCell<Log>>);

impl BaseProtocol for Recorder {
    fn connection_made(&mut self, t: Transport) {
        let mut l = self.0.borrow_mut();
        l.events.push("made".into());
        l.transport = Some(t);
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        let e = match exc {
            None => "lost".to_string(),
            Some(Error::Io(e)) => format!("lost:{:?}", e.kind()),
            Some(e) => format!("lost:{e}"),
        };
        self.0.borrow_mut().events.push(e);
    }
    fn pause_writing(&mut self) {
        self.0.borrow_mut().events.push("pause".into());
    }
    fn resume_writing(&mut self) {
        self.0.borrow_mut().events.push("resume".into());
    }
    fn eof_received(&mut self) -> bool {
        self.0.borrow_mut().events.push("eof".into());
        false
    }
}

impl Protocol for Recorder {
    fn data_received(&mut self, data: &[u8]) {
        self.0.borrow_mut().data.extend_from_slice(data);
    }
}

/// A std pipe end (blocking) for the test's side.
fn std_pipe() -> (std::fs::File, std::fs::File) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    (std::fs::File::from(r), std::fs::File::from(w))
}

fn events(log: &Rc<RefCell<Log>>) -> Vec<String> {
    log.borrow().events.clone()
}

/// Runs the loop until `cond` holds (bounded); fails otherwise.
fn until(lp: &EventLoop, what: &str, cond: impl FnMut() -> bool) {
    assert!(
        common::run_until(lp, LIMIT, cond),
        "timed out waiting for {what}"
    );
}

both_backends! {
    fn read_pipe_delivers_data_then_eof_then_lost(lp) {
        let log = Rc::new(RefCell::new(Log::default()));
        let (ours, theirs) = std_pipe();
        let (l2, l3) = (log.clone(), log.clone());
        let t = common::run_bounded(lp, LIMIT, async move {
            let lp = get_running_loop().unwrap();
            let pipe = Pipe::from_owned(OwnedFd::from(ours)).unwrap();
            let t = lp.connect_read_pipe(move || Recorder(l2), pipe).await.unwrap();
            assert_eq!(events(&l3), ["made"], "returned after connection_made");
            t
        });
        assert!(matches!(t.get_extra_info("pipe"), Some(ExtraInfo::Fd(_))));
        assert!(t.get_extra_info("socket").is_none());
        assert!(!t.can_write_eof());
        assert!(matches!(t.write(b"x".to_vec()), Err(Error::InvalidState(_))));
        let mut w = theirs;
        w.write_all(b"hello ").unwrap();
        until(lp, "first data", || log.borrow().data.len() == 6);
        w.write_all(b"world").unwrap();
        drop(w);
        until(lp, "connection_lost", || events(&log).last().is_some_and(|e| e.starts_with("lost")));
        assert_eq!(log.borrow().data, b"hello world");
        assert_eq!(events(&log), ["made", "eof", "lost"]);
    }
}

both_backends! {
    fn write_pipe_flow_control_and_write_eof(lp) {
        let log = Rc::new(RefCell::new(Log::default()));
        let (mut theirs, ours) = std_pipe();
        let total = 4 << 20;
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).unwrap();
            got
        });
        let l2 = log.clone();
        common::run_bounded(lp, LIMIT, async move {
            let lp = get_running_loop().unwrap();
            let pipe = Pipe::from_owned(OwnedFd::from(ours)).unwrap();
            let t = lp.connect_write_pipe(move || Recorder(l2), pipe).await.unwrap();
            assert!(t.can_write_eof());
            assert!(matches!(t.get_extra_info("pipe"), Some(ExtraInfo::Fd(_))));
            assert!(!t.is_reading());
            let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            for chunk in data.chunks(256 * 1024) {
                t.write(chunk.to_vec()).unwrap();
            }
            assert!(t.get_write_buffer_size() > 64 * 1024);
            t.write_eof().unwrap();
        });
        until(lp, "connection_lost", || events(&log).last().is_some_and(|e| e.starts_with("lost")));
        // (The kernel lets go of the pipe once the loop has turned again:
        // the watch's cancel goes with the next wait.)
        until(lp, "the reader's EOF", || reader.is_finished());
        let got = reader.join().unwrap();
        assert_eq!(got.len(), total);
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8), "bytes in order");
        let ev = events(&log);
        assert_eq!(ev.first().map(String::as_str), Some("made"));
        assert_eq!(ev.iter().filter(|e| *e == "pause").count(), 1, "{ev:?}");
        assert_eq!(ev.last().map(String::as_str), Some("lost"), "{ev:?}");
    }
}

both_backends! {
    fn write_pipe_reader_gone_idle_is_a_plain_close(lp) {
        let log = Rc::new(RefCell::new(Log::default()));
        let (theirs, ours) = std_pipe();
        let l2 = log.clone();
        let t = common::run_bounded(lp, LIMIT, async move {
            let lp = get_running_loop().unwrap();
            let pipe = Pipe::from_owned(OwnedFd::from(ours)).unwrap();
            lp.connect_write_pipe(move || Recorder(l2), pipe).await.unwrap()
        });
        drop(theirs);
        until(lp, "connection_lost", || events(&log).len() == 2);
        assert_eq!(events(&log), ["made", "lost"]);
        assert!(t.is_closing());
    }
}

both_backends! {
    fn write_pipe_reader_gone_with_data_is_a_broken_pipe(lp) {
        let log = Rc::new(RefCell::new(Log::default()));
        let (theirs, ours) = std_pipe();
        let l2 = log.clone();
        common::run_bounded(lp, LIMIT, async move {
            let lp = get_running_loop().unwrap();
            let pipe = Pipe::from_owned(OwnedFd::from(ours)).unwrap();
            let t = lp.connect_write_pipe(move || Recorder(l2), pipe).await.unwrap();
            // More than the pipe holds: some stays buffered.
            t.write(vec![7u8; 1 << 20]).unwrap();
            ringloop::sleep(Duration::from_millis(1)).await.unwrap();
        });
        drop(theirs);
        until(lp, "connection_lost", || events(&log).last().is_some_and(|e| e.starts_with("lost")));
        let ev = events(&log);
        assert_eq!(ev.last().map(String::as_str), Some("lost:BrokenPipe"), "{ev:?}");
    }
}

both_backends! {
    fn pipe_transports_refuse_regular_files(lp) {
        common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let f = std::fs::File::open("/proc/self/exe").unwrap();
            let pipe = Pipe::from_owned(OwnedFd::from(f)).unwrap();
            let r = lp.connect_read_pipe(|| Recorder(Default::default()), pipe).await;
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
        });
    }
}

both_backends! {
    fn exit_codes_of_echo_cat_and_sh(lp) {
        common::run_bounded(lp, LIMIT, async {
            let mut p = create_subprocess_exec("echo", ["hello", "world"], SubprocessOptions::default())
                .await
                .unwrap();
            assert!(p.pid() > 0);
            let (out, err) = p.communicate(None::<Vec<u8>>).await.unwrap();
            assert_eq!(out.unwrap(), &b"hello world\n"[..]);
            assert_eq!(err.unwrap(), &b""[..]);
            assert_eq!(p.returncode(), Some(0));

            let mut p = create_subprocess_exec("cat", [] as [&str; 0], SubprocessOptions::default())
                .await
                .unwrap();
            let (out, _) = p.communicate(Some(b"through cat".to_vec())).await.unwrap();
            assert_eq!(out.unwrap(), &b"through cat"[..]);
            assert_eq!(p.returncode(), Some(0));

            let p = create_subprocess_shell("exit 7", SubprocessOptions::default()).await.unwrap();
            assert_eq!(p.returncode(), None);
            assert_eq!(p.wait().await, 7);
            assert_eq!(p.returncode(), Some(7));
            assert!(matches!(p.kill(), Err(Error::Io(e)) if e.raw_os_error() == Some(libc::ESRCH)));
        });
    }
}

both_backends! {
    fn killed_child_reports_minus_the_signal(lp) {
        common::run_bounded(lp, LIMIT, async {
            let p = create_subprocess_exec("sleep", ["30"], SubprocessOptions::default()).await.unwrap();
            assert!(matches!(p.send_signal(0), Err(Error::InvalidArgument(_))));
            assert!(matches!(p.send_signal(1000), Err(Error::InvalidArgument(_))));
            p.kill().unwrap();
            assert_eq!(p.wait().await, -9);
            let p = create_subprocess_exec("sleep", ["30"], SubprocessOptions::default()).await.unwrap();
            p.terminate().unwrap();
            assert_eq!(p.wait().await, -libc::SIGTERM);
        });
    }
}

both_backends! {
    fn communicate_ten_mib_in_and_out(lp) {
        common::run_bounded(lp, LIMIT, async {
            let input: Vec<u8> = (0..10u32 << 20).map(|i| (i % 253) as u8).collect();
            let mut p = create_subprocess_exec("cat", [] as [&str; 0], SubprocessOptions::default())
                .await
                .unwrap();
            let (out, _) = p.communicate(Some(input.clone())).await.unwrap();
            let out = out.unwrap();
            assert_eq!(out.len(), input.len());
            assert!(out[..] == input[..], "10 MiB came back intact");
            assert_eq!(p.returncode(), Some(0));
        });
    }
}

both_backends! {
    fn communicate_ignores_a_child_that_stops_reading(lp) {
        common::run_bounded(lp, LIMIT, async {
            // `head -c 10` exits after 10 bytes: the rest hits a broken pipe.
            let mut p = create_subprocess_exec("head", ["-c", "10"], SubprocessOptions::default())
                .await
                .unwrap();
            let (out, _) = p.communicate(Some(vec![b'z'; 4 << 20])).await.unwrap();
            assert_eq!(out.unwrap(), &b"zzzzzzzzzz"[..]);
            assert_eq!(p.returncode(), Some(0));
        });
    }
}

both_backends! {
    fn fifty_children_at_once_and_two_exiting_together(lp) {
        common::run_bounded(lp, LIMIT, async {
            let mut ps = Vec::new();
            for i in 0..50 {
                let opts = SubprocessOptions { stdin: Stdio::DevNull, ..Default::default() };
                ps.push(create_subprocess_shell(format!("echo {i}; exit {}", i % 5), opts).await.unwrap());
            }
            for (i, p) in ps.iter_mut().enumerate() {
                let (out, _) = p.communicate(None::<Vec<u8>>).await.unwrap();
                assert_eq!(out.unwrap(), format!("{i}\n").as_bytes());
                assert_eq!(p.returncode(), Some((i % 5) as i32));
            }
            // Two children killed by one signal to their shared group.
            let a = create_subprocess_exec("sleep", ["30"], SubprocessOptions {
                process_group: Some(0), ..Default::default()
            }).await.unwrap();
            let b = create_subprocess_exec("sleep", ["30"], SubprocessOptions {
                process_group: Some(a.pid() as i32), ..Default::default()
            }).await.unwrap();
            assert_eq!(unsafe { libc::kill(-(a.pid() as i32), libc::SIGKILL) }, 0);
            assert_eq!((a.wait().await, b.wait().await), (-9, -9));
        });
    }
}

both_backends! {
    fn a_dropped_process_leaves_no_zombie(lp) {
        let pid = common::run_bounded(lp, LIMIT, async {
            let p = create_subprocess_exec("true", [] as [&str; 0], SubprocessOptions::default())
                .await
                .unwrap();
            p.pid()
        });
        // Nobody waits: the loop still reaps it (a zombie keeps /proc/PID).
        until(lp, "the child reaped", || !std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}

both_backends! {
    fn standard_streams_env_cwd_pass_fds_and_group(lp) {
        common::run_bounded(lp, LIMIT, async {
            // stderr merged into stdout.
            let mut p = create_subprocess_shell("echo out; echo err >&2", SubprocessOptions {
                stderr: Stdio::Stdout, ..Default::default()
            }).await.unwrap();
            assert!(p.stderr.is_none());
            let (out, err) = p.communicate(None::<Vec<u8>>).await.unwrap();
            assert_eq!(out.unwrap(), &b"out\nerr\n"[..]);
            assert!(err.is_none());

            // stdout to /dev/null and to a file of ours; env and cwd.
            let lp = get_running_loop().unwrap();
            let file = std::env::temp_dir()
                .join(format!("ringloop-sub-{}-{}", std::process::id(), lp.backend()));
            let f = std::fs::File::create(&file).unwrap();
            let mut p = create_subprocess_shell("echo \"$FOO\"; pwd", SubprocessOptions {
                stdout: Stdio::Fd(OwnedFd::from(f)),
                env: Some(vec![("FOO".into(), "bar".into()), ("PATH".into(), "/usr/bin:/bin".into())]),
                cwd: Some("/".into()),
                ..Default::default()
            }).await.unwrap();
            assert!(p.stdout.is_none());
            p.communicate(None::<Vec<u8>>).await.unwrap();
            assert_eq!(std::fs::read_to_string(&file).unwrap(), "bar\n/\n");
            std::fs::remove_file(&file).unwrap();

            // pass_fds stays open at its number; an inheritable fd that is
            // not passed is closed in the child.
            let (mut r, w) = std_pipe();
            let wfd = w.as_raw_fd();
            let leaky = unsafe { libc::dup(w.as_raw_fd()) }; // (no CLOEXEC)
            assert!(leaky > 2);
            let script = format!(
                "echo passed >&{wfd}; if [ -e /proc/self/fd/{leaky} ]; then echo leaked; else echo closed; fi; \
                 cut -d' ' -f5 /proc/$$/stat; echo $$"
            );
            // (bash: dash redirects only fds 0-9.)
            let mut p = create_subprocess_exec("bash", ["-c", &script], SubprocessOptions {
                pass_fds: vec![wfd],
                process_group: Some(0),
                ..Default::default()
            }).await.unwrap();
            let (out, _) = p.communicate(None::<Vec<u8>>).await.unwrap();
            unsafe { libc::close(leaky) };
            drop(w);
            let mut passed = String::new();
            r.read_to_string(&mut passed).unwrap();
            assert_eq!(passed, "passed\n");
            let out = String::from_utf8(out.unwrap().to_vec()).unwrap();
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines[0], "closed", "{out}");
            assert_eq!(lines[1], lines[2], "the child leads its own group: {out}");
            assert_eq!(lines[2], p.pid().to_string());

            // A new session.
            let mut p = create_subprocess_shell("cut -d' ' -f6 /proc/$$/stat; echo $$", SubprocessOptions {
                start_new_session: true, ..Default::default()
            }).await.unwrap();
            let (out, _) = p.communicate(None::<Vec<u8>>).await.unwrap();
            let out = String::from_utf8(out.unwrap().to_vec()).unwrap();
            let l: Vec<&str> = out.lines().collect();
            assert_eq!(l[0], l[1], "session id is the child's pid: {out}");

            let r = create_subprocess_exec("/no/such/program", [] as [&str; 0], SubprocessOptions::default()).await;
            assert!(matches!(&r, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound), "{r:?}");
        });
    }
}

both_backends! {
    fn low_level_protocol_sees_asyncios_order(lp) {
        let log = Rc::new(RefCell::new(Vec::<String>::new()));
        let l2 = log.clone();
        let t = common::run_bounded(lp, LIMIT, async move {
            let lp = get_running_loop().unwrap();
            let t = lp
                .subprocess_shell(move || SubRecorder(l2), "read x; echo got $x; exit 3", SubprocessOptions::default())
                .await
                .unwrap();
            assert_eq!(log.borrow().as_slice(), ["made"]);
            assert!(t.get_pipe_transport(0).is_some() && t.get_pipe_transport(2).is_some());
            assert!(t.get_pipe_transport(3).is_none() && t.get_pipe_transport(-1).is_none());
            t.get_pipe_transport(0).unwrap().write(b"abc\n".to_vec()).unwrap();
            (t, log)
        });
        let (t, log) = t;
        until(lp, "connection_lost", || log.borrow().last().is_some_and(|e| e == "lost"));
        let ev = log.borrow().clone();
        assert_eq!(ev.first().map(String::as_str), Some("made"));
        assert_eq!(ev.last().map(String::as_str), Some("lost"));
        assert!(ev.contains(&"data1:got abc\n".to_string()), "{ev:?}");
        for e in ["pipe_lost0", "pipe_lost1", "pipe_lost2", "exited"] {
            assert_eq!(ev.iter().filter(|x| *x == e).count(), 1, "{e} once: {ev:?}");
        }
        let pos = |e: &str| ev.iter().position(|x| x == e).unwrap();
        assert!(pos("data1:got abc\n") < pos("pipe_lost1"), "{ev:?}");
        assert_eq!(t.get_returncode(), Some(3));

        // A stream that is not a pipe has no pipe transport.
        let t = common::run_bounded(lp, LIMIT, async move {
            let lp = get_running_loop().unwrap();
            lp.subprocess_exec(|| SubRecorder(Default::default()), "true", [] as [&str; 0], SubprocessOptions {
                stdout: Stdio::DevNull, ..Default::default()
            }).await.unwrap()
        });
        assert!(t.get_pipe_transport(1).is_none());
        assert!(t.get_pipe_transport(0).is_some());
        t.close();
        until(lp, "exit", || t.get_returncode().is_some());
    }
}

both_backends! {
    fn a_child_reaped_elsewhere_gives_255(lp) {
        let (p, code) = common::run_bounded(lp, LIMIT, async {
            let p = create_subprocess_shell("exit 3", SubprocessOptions::default()).await.unwrap();
            // Reap it behind the loop's back, before the loop looks.
            let mut st = 0;
            let r = unsafe { libc::waitpid(p.pid() as i32, &mut st, 0) };
            assert_eq!(r, p.pid() as i32);
            let code = p.wait().await;
            (p, code)
        });
        assert_eq!(code, 255);
        assert_eq!(p.returncode(), Some(255));
    }
}

both_backends! {
    fn a_loop_closed_under_a_running_child_kills_and_reaps_it(lp) {
        // (The handle is kept: a dropped Process is left running.)
        let p = common::run_bounded(lp, LIMIT, async {
            create_subprocess_exec("sleep", ["30"], SubprocessOptions::default())
                .await
                .unwrap()
        });
        let pid = p.pid();
        lp.close().unwrap();
        // As `SubprocessTransport::close`: killed, then reaped off the loop.
        let t0 = std::time::Instant::now();
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(t0.elapsed() < LIMIT, "child {pid} still there after the loop closed");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(p);
    }
}

both_backends! {
    fn bad_options_are_clear_errors_and_spawn_nothing(lp) {
        common::run_bounded(lp, LIMIT, async {
            let bad = |r: ringloop::Result<ringloop::Process>| match r {
                Err(Error::InvalidArgument(m)) => m,
                other => panic!("expected InvalidArgument, got {other:?}"),
            };
            let m = bad(create_subprocess_exec("true", [] as [&str; 0], SubprocessOptions {
                stdin: Stdio::Stdout, ..Default::default()
            }).await);
            assert!(m.contains("only for stderr"), "{m}");
            for fd in [1, -1, 1_000_000] {
                let m = bad(create_subprocess_exec("true", [] as [&str; 0], SubprocessOptions {
                    pass_fds: vec![fd], ..Default::default()
                }).await);
                assert!(m.contains("pass_fds"), "{m}");
            }
        });
        lp.close().unwrap();
        let r = common::catch(|| {
            let lp2 = lp.clone();
            futures_ready(lp2.subprocess_exec(|| SubRecorder(Default::default()), "true", [] as [&str; 0], SubprocessOptions::default()))
        });
        assert!(matches!(r, Ok(Err(Error::Closed(_)))), "a closed loop spawns nothing: {r:?}");
    }
}

/// Polls a future once (it must be ready: a closed loop's calls fail at once).
fn futures_ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("not ready"),
    }
}

/// What a subprocess protocol saw, in order.
struct SubRecorder(Rc<RefCell<Vec<String>>>);

impl SubprocessProtocol for SubRecorder {
    fn connection_made(&mut self, _: SubprocessTransport) {
        self.0.borrow_mut().push("made".into());
    }
    fn pipe_data_received(&mut self, fd: i32, data: &[u8]) {
        self.0
            .borrow_mut()
            .push(format!("data{fd}:{}", String::from_utf8_lossy(data)));
    }
    fn pipe_connection_lost(&mut self, fd: i32, _: Option<Error>) {
        self.0.borrow_mut().push(format!("pipe_lost{fd}"));
    }
    fn process_exited(&mut self) {
        self.0.borrow_mut().push("exited".into());
    }
    fn connection_lost(&mut self, _: Option<Error>) {
        self.0.borrow_mut().push("lost".into());
    }
}

const NO_PIDFD: ChildTest = ChildTest::new("without_pidfds_a_thread_waits_for_each_child");

/// The fallback for kernels without pidfds, forced by the environment in
/// a child process (the switch is process-wide), on both backends there.
#[test]
fn without_pidfds_a_thread_waits_for_each_child() {
    if NO_PIDFD.child_side(|case| {
        let backend = if case == "proactor" {
            Backend::Proactor
        } else {
            Backend::Selector
        };
        let lp = common::new_loop(backend);
        let (codes, pid) = common::run_bounded(&lp, LIMIT, async {
            let mut codes = Vec::new();
            for c in [0, 5] {
                let p = create_subprocess_shell(format!("exit {c}"), SubprocessOptions::default())
                    .await
                    .unwrap();
                codes.push(p.wait().await);
            }
            let mut p = create_subprocess_exec("echo", ["hi"], SubprocessOptions::default())
                .await
                .unwrap();
            let (out, _) = p.communicate(None::<Vec<u8>>).await.unwrap();
            assert_eq!(out.unwrap(), &b"hi\n"[..]);
            let k = create_subprocess_exec("sleep", ["30"], SubprocessOptions::default())
                .await
                .unwrap();
            k.kill().unwrap();
            codes.push(k.wait().await);
            // Dropped without waiting: the thread reaps it.
            let d = create_subprocess_exec("true", [] as [&str; 0], SubprocessOptions::default())
                .await
                .unwrap();
            (codes, d.pid())
        });
        assert_eq!(codes, [0, 5, -9]);
        assert!(common::run_until(&lp, LIMIT, || !std::path::Path::new(
            &format!("/proc/{pid}")
        )
        .exists()));
        common::assert_backend_used(&lp, backend);
        lp.close().unwrap();
    }) {
        return;
    }
    for case in ["proactor", "selector"] {
        NO_PIDFD.run(case, &[("RINGLOOP_NO_PIDFD", "1")]);
    }
}

/// Whether SIGPIPE is ignored in the process whose `/proc/.../status`
/// this is (the `SigIgn:` mask, bit 12 for signal 13).
fn sigpipe_ignored(status: &str) -> bool {
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .unwrap_or_else(|| panic!("no SigIgn in {status:?}"));
    let mask = u64::from_str_radix(mask.trim(), 16).unwrap();
    mask & (1 << (libc::SIGPIPE - 1)) != 0
}

both_backends! {
    fn posix_spawn_unless_pass_fds_and_sigpipe_at_default_either_way(lp) {
        // std ignores SIGPIPE in this process: the children must not.
        assert!(sigpipe_ignored(&std::fs::read_to_string("/proc/self/status").unwrap()));
        let (counts, outs) = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let mut counts = vec![lp.subprocess_spawns()];
            let mut outs = Vec::new();
            let (_r, w) = std_pipe();
            for pass_fds in [vec![], vec![w.as_raw_fd()]] {
                let mut p = create_subprocess_exec("cat", ["/proc/self/status"], SubprocessOptions {
                    pass_fds, ..Default::default()
                }).await.unwrap();
                let (out, _) = p.communicate(None::<Vec<u8>>).await.unwrap();
                assert_eq!(p.returncode(), Some(0));
                outs.push(String::from_utf8(out.unwrap().to_vec()).unwrap());
                counts.push(lp.subprocess_spawns());
            }
            // Everything else posix_spawn says (on glibc 2.34 or later).
            for opts in [
                SubprocessOptions {
                    env: Some(vec![("PATH".into(), "/usr/bin:/bin".into())]),
                    cwd: Some("/".into()),
                    process_group: Some(0),
                    stdout: Stdio::DevNull,
                    stderr: Stdio::Stdout,
                    ..Default::default()
                },
                SubprocessOptions { start_new_session: true, ..Default::default() },
            ] {
                let p = create_subprocess_exec("true", [] as [&str; 0], opts).await.unwrap();
                assert_eq!(p.wait().await, 0);
                counts.push(lp.subprocess_spawns());
            }
            (counts, outs)
        });
        // (Counted per thread: other tests' children don't show.)
        let (p0, f0) = counts[0];
        assert_eq!(counts[1], (p0 + 1, f0), "no pass_fds: posix_spawn (glibc 2.34 or later)");
        assert_eq!(counts[2], (p0 + 1, f0 + 1), "pass_fds: fork + exec");
        assert_eq!(counts[3], (p0 + 2, f0 + 1), "env, cwd, group: posix_spawn");
        assert_eq!(counts[4], (p0 + 3, f0 + 1), "a new session: posix_spawn");
        for out in &outs {
            assert!(!sigpipe_ignored(out), "{out}");
        }
    }
}

both_backends! {
    fn a_bare_name_is_looked_up_in_the_childs_path(lp) {
        // A program only the child's PATH has (as std does it: `execvp`
        // in the child's environment).
        let lp_name = lp.backend().to_string();
        let dir = std::env::temp_dir()
            .join(format!("ringloop-path-{}-{lp_name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prog = dir.join("ringloop-path-probe");
        std::fs::write(&prog, "#!/bin/sh\necho probed \"$1\"\n").unwrap();
        std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let not_exec = dir.join("ringloop-not-exec");
        std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
        let path = format!("/no/such/dir:{}:/usr/bin:/bin", dir.display());
        common::run_bounded(lp, LIMIT, async move {
            let env = |vars: &[(&str, &str)]| {
                Some(vars.iter().map(|(k, v)| (k.into(), v.into())).collect::<Vec<_>>())
            };
            let mut p = create_subprocess_exec("ringloop-path-probe", ["x"], SubprocessOptions {
                env: env(&[("PATH", "/wrong"), ("PATH", &path)]), ..Default::default()
            }).await.unwrap();
            let (out, _) = p.communicate(None::<Vec<u8>>).await.unwrap();
            assert_eq!(out.unwrap(), &b"probed x\n"[..]);

            // Not in the parent's PATH.
            let r = create_subprocess_exec("ringloop-path-probe", [] as [&str; 0], SubprocessOptions::default()).await;
            assert!(matches!(&r, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound), "{r:?}");
            // A child's PATH without it.
            let r = create_subprocess_exec("sh", ["-c", "true"], SubprocessOptions {
                env: env(&[("PATH", "/no/such/dir")]), ..Default::default()
            }).await;
            assert!(matches!(&r, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound), "{r:?}");
            // Found, but not executable.
            let r = create_subprocess_exec("ringloop-not-exec", [] as [&str; 0], SubprocessOptions {
                env: env(&[("PATH", &path)]), ..Default::default()
            }).await;
            assert!(matches!(&r, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::PermissionDenied), "{r:?}");
            // No PATH at all: execvp's /bin:/usr/bin.
            let mut p = create_subprocess_exec("echo", ["default"], SubprocessOptions {
                env: env(&[("FOO", "1")]), ..Default::default()
            }).await.unwrap();
            let (out, _) = p.communicate(None::<Vec<u8>>).await.unwrap();
            assert_eq!(out.unwrap(), &b"default\n"[..]);
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

const LOW_FD: ChildTest = ChildTest::new("a_stream_source_at_fd_0_survives_the_others");

/// A stream's source may itself be fd 0-2 (here stdout's is fd 0, which
/// stdin's pipe is put onto too): it must reach the child intact. In a
/// child process, whose own fd 0 this may take.
#[test]
fn a_stream_source_at_fd_0_survives_the_others() {
    if LOW_FD.child_side(|case| {
        let backend = if case == "proactor" {
            Backend::Proactor
        } else {
            Backend::Selector
        };
        let lp = common::new_loop(backend);
        let (mut r, w) = std_pipe();
        // SAFETY (test): fd 0 is this process's alone; it becomes the
        // pipe's write end.
        assert_eq!(unsafe { libc::dup2(w.as_raw_fd(), 0) }, 0);
        drop(w);
        // SAFETY (test): fd 0 is open and owned by nothing else now.
        let fd0 = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(0) };
        let code = common::run_bounded(&lp, LIMIT, async {
            let mut p = create_subprocess_shell(
                "read x; echo \"got $x\"",
                SubprocessOptions {
                    stdin: Stdio::Pipe,
                    stdout: Stdio::Fd(fd0),
                    stderr: Stdio::Stdout,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            p.communicate(Some(b"in\n".to_vec())).await.unwrap();
            p.returncode()
        });
        assert_eq!(code, Some(0));
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "got in\n");
        common::assert_backend_used(&lp, backend);
        lp.close().unwrap();
    }) {
        return;
    }
    for case in ["proactor", "selector"] {
        LOW_FD.run(case, &[]);
    }
}

const NO_READ_MULTI: ChildTest = ChildTest::new("without_multishot_read_a_pipe_takes_plain_reads");

/// Kernels before 6.7 have no multishot `read`: the proactor's pipe
/// receives are then plain reads, one at a time. Forced by the
/// environment in a child (the probe is per ring); proactor only, since
/// the selector never uses the opcode.
#[test]
fn without_multishot_read_a_pipe_takes_plain_reads() {
    if NO_READ_MULTI.child_side(|_| {
        let lp = common::new_loop(Backend::Proactor);
        common::run_bounded(&lp, LIMIT, async {
            let input: Vec<u8> = (0..2u32 << 20).map(|i| (i % 239) as u8).collect();
            let mut p =
                create_subprocess_exec("cat", [] as [&str; 0], SubprocessOptions::default())
                    .await
                    .unwrap();
            let (out, _) = p.communicate(Some(input.clone())).await.unwrap();
            assert!(out.unwrap()[..] == input[..]);
            assert_eq!(p.returncode(), Some(0));
        });
        common::assert_backend_used(&lp, Backend::Proactor);
        lp.close().unwrap();
    }) {
        return;
    }
    NO_READ_MULTI.run("proactor", &[("RINGLOOP_NO_READ_MULTISHOT", "1")]);
}
