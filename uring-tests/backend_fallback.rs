//! Backend choice as users meet it. Each case runs in a child process (the
//! io_uring probe is cached per process, and the environment is
//! process-wide), so these tests are about the choice itself rather than
//! generated for both backends; the fallback child then checks that the
//! chosen selector really works.
//!
//! Docker's default seccomp profile makes `io_uring_setup` fail with EPERM;
//! the `seccomp` child installs the same kind of filter before touching
//! ringloop and proves the default loop falls back to epoll and serves.
//!
//! Each test re-runs itself as its child (`common::child`): run normally it
//! is the parent and fails unless its child finished its case.

mod common;

use std::time::Duration;

use common::child::ChildTest;
use ringloop::prelude::*;

/// Makes `io_uring_setup`, `io_uring_enter` and `io_uring_register` fail
/// with EPERM in this process, as Docker's default profile does.
fn deny_io_uring() {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let filter = [
        stmt(ld, 4), // seccomp_data.arch
        jeq(ARCH, 1, 0),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
        stmt(ld, 0), // seccomp_data.nr
        jeq(libc::SYS_io_uring_setup as u32, 3, 0),
        jeq(libc::SYS_io_uring_enter as u32, 2, 0),
        jeq(libc::SYS_io_uring_register as u32, 1, 0),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
        stmt(ret, eperm),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: plain prctl calls; the filter outlives the call that copies it.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog
            ),
            0,
            "seccomp: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A raw io_uring_setup, to see what the kernel says now.
fn raw_io_uring_setup() -> std::io::Result<()> {
    let mut params = [0u8; 120];
    // SAFETY: a valid params buffer of io_uring_params' size.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: we own the fd just returned.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// A timer and a TCP echo on `lp`; panics if anything is off.
fn exercise(lp: &EventLoop) {
    let out = lp
        .run_until_complete(async {
            let lp = get_running_loop().unwrap();
            ringloop::sleep(Duration::from_millis(5)).await.unwrap();
            let listener = Socket::tcp_listener(&"127.0.0.1:0".parse().unwrap(), 8).unwrap();
            let addr = listener.local_addr().unwrap();
            let client = Socket::tcp_for(&addr.as_socket().unwrap()).unwrap();
            lp.sock_connect(&client, &addr).await.unwrap();
            let (conn, _) = lp.sock_accept(&listener).await.unwrap();
            lp.sock_sendall(&client, &b"ping"[..]).await.unwrap();
            let got = lp.sock_recv(&conn, 16).await.unwrap();
            let server = ringloop::start_server(
                |r, w| async move {
                    let l = r.readline().await.unwrap();
                    w.write(l).unwrap();
                },
                "127.0.0.1",
                0,
            )
            .await
            .unwrap();
            let port = server.sockets()[0].as_socket().unwrap().port();
            let (r, w) = ringloop::open_connection("127.0.0.1", port).await.unwrap();
            w.write(&b"line\n"[..]).unwrap();
            let l = r.readline().await.unwrap();
            server.close();
            (got, l)
        })
        .unwrap();
    assert_eq!(out.0, b"ping");
    assert_eq!(&out.1[..], b"line\n");
}

const SECCOMP: ChildTest = ChildTest::new("docker_style_seccomp_falls_back_to_the_selector");

#[test]
fn docker_style_seccomp_falls_back_to_the_selector() {
    if SECCOMP.child_side(|_| {
        deny_io_uring();
        let e = raw_io_uring_setup().expect_err("the filter must block io_uring_setup");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        let why = ringloop::proactor_available().expect_err("probe must fail");
        assert!(why.contains("EPERM"), "{why}");
        let lp = EventLoop::new().expect("the default loop falls back");
        assert_eq!(lp.backend(), Backend::Selector);
        exercise(&lp);
        assert!(lp.driver_stats().epoll_waits > 0);
        assert_eq!(lp.driver_stats().uring_enters, 0);
        lp.close().unwrap();
        assert!(matches!(ringloop::run(async { 7 }), Ok(7)));
        match EventLoop::proactor() {
            Err(Error::Unsupported(m)) => assert!(m.contains("EPERM"), "{m}"),
            other => panic!("explicit proactor must fail clearly: {other:?}"),
        }
        assert!(matches!(
            ringloop::ProactorEventLoop::new(),
            Err(Error::Unsupported(_))
        ));
    }) {
        return;
    }
    SECCOMP.run("seccomp", &[]);
}

const FORCED: ChildTest = ChildTest::new("forcing_the_proactor_under_seccomp_is_an_error");

#[test]
fn forcing_the_proactor_under_seccomp_is_an_error() {
    if FORCED.child_side(|_| {
        deny_io_uring();
        match EventLoop::new() {
            Err(Error::Unsupported(m)) => {
                assert!(m.contains("RINGLOOP_BACKEND=proactor"), "{m}");
                assert!(m.contains("EPERM"), "{m}");
            }
            other => panic!("forcing the proactor must be an error: {other:?}"),
        }
        assert!(ringloop::run(async {}).is_err());
    }) {
        return;
    }
    FORCED.run("seccomp-forced", &[("RINGLOOP_BACKEND", "proactor")]);
}

const ENV_VAR: ChildTest = ChildTest::new("ringloop_backend_env_var");

#[test]
fn ringloop_backend_env_var() {
    if ENV_VAR.child_side(|case| match case {
        "selector" => {
            let lp = EventLoop::new().unwrap();
            assert_eq!(lp.backend(), Backend::Selector);
            exercise(&lp);
            lp.close().unwrap();
        }
        "proactor" | "unset" => {
            let lp = EventLoop::new().unwrap();
            assert_eq!(
                lp.backend(),
                Backend::Proactor,
                "io_uring works on this machine"
            );
            exercise(&lp);
            assert!(lp.driver_stats().uring_enters > 0);
            lp.close().unwrap();
        }
        "bogus" => {
            assert!(
                matches!(EventLoop::new(), Err(Error::InvalidArgument(m)) if m.contains("bogus"))
            );
            assert!(matches!(
                ringloop::default_backend(),
                Err(Error::InvalidArgument(_))
            ));
        }
        other => panic!("unknown case {other}"),
    }) {
        return;
    }
    ENV_VAR.run("selector", &[("RINGLOOP_BACKEND", "selector")]);
    ENV_VAR.run("proactor", &[("RINGLOOP_BACKEND", "proactor")]);
    ENV_VAR.run("unset", &[]);
    ENV_VAR.run("bogus", &[("RINGLOOP_BACKEND", "bogus")]);
}

#[test]
fn explicit_constructors() {
    let p = ringloop::ProactorEventLoop::new().unwrap();
    let s = ringloop::SelectorEventLoop::new().unwrap();
    assert_eq!(p.backend(), Backend::Proactor);
    assert_eq!(s.backend(), Backend::Selector);
    for lp in [p, s] {
        exercise(&lp);
        lp.close().unwrap();
    }
}
