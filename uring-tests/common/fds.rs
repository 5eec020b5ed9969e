//! Fds and sockets for the tests: counting and naming this process's open
//! fds (leak checks), putting a new fd on a chosen number (fd reuse),
//! connected pairs, and a listener that holds a connect in flight.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use ringloop::Socket;

/// Number of open fds of this process, for leak checks: compare two counts
/// (both include the directory's own fd), and only where nothing else in
/// the process opens or closes fds meanwhile (`serial` tests). Without
/// `/proc` it fails rather than count 0 and let every check pass.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd (fd leak checks need it)")
        .count()
}

/// True while `fd` names an open descriptor of this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only inspects the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// What each open fd of this process is (`socket:[…]`, `anon_inode:[…]`),
/// to name the leaked ones in a failure.
pub fn fd_targets() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|p| {
                    let s = p.to_string_lossy().into_owned();
                    if s.starts_with("anon_inode") {
                        s // anon_inode:[eventfd], anon_inode:[io_uring], …
                    } else {
                        // socket:[12345] -> socket (inode numbers differ).
                        s.split(":[").next().unwrap_or(&s).to_owned()
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The fds in `now` and not in `before` (as a multiset), described.
pub fn fd_diff(before: &[String], now: &[String]) -> Vec<String> {
    let mut left = before.to_vec();
    let mut extra = Vec::new();
    for f in now {
        if let Some(i) = left.iter().position(|b| b == f) {
            left.swap_remove(i);
        } else {
            extra.push(f.clone());
        }
    }
    extra
}

/// `fd` moved to the descriptor number `at`, which must be free (just
/// closed): what a reused fd number looks like to the loop.
pub fn move_to_fd(fd: OwnedFd, at: RawFd) -> OwnedFd {
    if fd.as_raw_fd() == at {
        return fd;
    }
    assert!(!fd_is_open(at), "fd {at} is not free");
    // SAFETY: `at` is a free descriptor number; dup3 makes it a new
    // descriptor that we own from here on.
    let n = unsafe { libc::dup3(fd.as_raw_fd(), at, libc::O_CLOEXEC) };
    assert_eq!(n, at, "dup3: {}", std::io::Error::last_os_error());
    // SAFETY: dup3 just created `at`; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(at) }
}

/// Raises the soft `RLIMIT_NOFILE` to `to` (at most the hard limit).
pub fn raise_nofile(to: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if r.rlim_cur < to {
        r.rlim_cur = to.min(r.rlim_max);
        // SAFETY: valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    }
}

/// A connected TCP pair on 127.0.0.1: a blocking std peer (5 s read
/// timeout) and a ringloop socket.
pub fn tcp_pair() -> (TcpStream, Socket) {
    let (peer, ours) = tcp_pair_std();
    (peer, Socket::from(ours))
}

/// As [`tcp_pair`], with the ringloop socket on the descriptor number
/// `at` (which must be free): a socket on a just-reused fd number.
pub fn tcp_pair_at(at: RawFd) -> (TcpStream, Socket) {
    // New fds take the lowest free numbers: hold `at` while the pair is made.
    let hold = move_to_fd(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()), at);
    let (peer, ours) = tcp_pair_std();
    // SAFETY: both are descriptors we own; dup3 atomically makes `at` a
    // copy of `ours` in place of the placeholder.
    let n = unsafe { libc::dup3(ours.as_raw_fd(), hold.as_raw_fd(), libc::O_CLOEXEC) };
    assert_eq!(n, at, "dup3: {}", std::io::Error::last_os_error());
    // `hold` owns the number `at`, which is the socket's now.
    let ours = TcpStream::from(hold);
    (peer, Socket::from(ours))
}

fn tcp_pair_std() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (peer, ours)
}

/// A listener on 127.0.0.1 that never accepts, its accept queue full
/// (`listen(0)` and one connection in it): the kernel drops further SYNs,
/// so a connect to [`addr`](Self::addr) stays in flight (SYN retries, for
/// minutes) until it is cancelled. All on loopback.
pub struct BlackHole {
    pub addr: SocketAddr,
    listener: socket2::Socket,
    fillers: Vec<TcpStream>,
}

impl BlackHole {
    pub fn new() -> BlackHole {
        let listener =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        listener
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        // Connect until one does not complete: the queue is full then.
        let mut fillers = Vec::new();
        for _ in 0..8 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => fillers.push(s),
                Err(_) => break,
            }
        }
        assert!(
            !fillers.is_empty() && fillers.len() < 8,
            "the listener's accept queue never filled ({} connects completed)",
            fillers.len()
        );
        BlackHole {
            addr,
            listener,
            fillers,
        }
    }
}
