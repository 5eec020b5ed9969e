//! Owned sockets and the loop's low-level socket API (`sock_recv`,
//! `sock_sendall`, `sock_accept`, …), on the driver's owned-buffer ops.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use socket2::Protocol;
pub use socket2::{Domain, Protocol as SockProtocol, SockAddr, Type};

use crate::base_loop::EventLoop;
use crate::driver::buf::{IoBuf, IoBufMut};
use crate::driver::fd::SharedFd;
use crate::driver::ops::{Accept, AcceptMulti, Connect, Recv, RecvFrom, Send, SendMsg};
use crate::driver::{MultiOp, Op};
use crate::error::{Error, Result};

/// A non-blocking, close-on-exec socket owned by ringloop.
///
/// The descriptor is closed when the last holder goes: this value and every
/// operation still in flight on it. Dropping a `Socket` while a cancelled
/// receive is still in the kernel therefore never lets a reused fd number
/// receive that completion.
pub struct Socket {
    fd: SharedFd,
}

impl Socket {
    /// A new socket, non-blocking and close-on-exec.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from `socket(2)`.
    pub fn new(domain: Domain, ty: Type, protocol: Option<Protocol>) -> Result<Socket> {
        let s = socket2::Socket::new(domain, ty.nonblocking().cloexec(), protocol)?;
        Ok(Socket {
            fd: SharedFd::new(OwnedFd::from(s)),
        })
    }

    /// A TCP socket for `addr`'s family.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from `socket(2)`.
    pub fn tcp_for(addr: &SocketAddr) -> Result<Socket> {
        Socket::new(
            Domain::for_address(*addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )
    }

    /// A UDP socket for `addr`'s family.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from `socket(2)`.
    pub fn udp_for(addr: &SocketAddr) -> Result<Socket> {
        Socket::new(Domain::for_address(*addr), Type::DGRAM, Some(Protocol::UDP))
    }

    /// A listening TCP socket bound to `addr` (`SO_REUSEADDR` on), as
    /// `socket` + `bind` + `listen(backlog)`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from any of the three calls.
    pub fn tcp_listener(addr: &SocketAddr, backlog: i32) -> Result<Socket> {
        let s = Socket::tcp_for(addr)?;
        s.with(|s| s.set_reuse_address(true))?;
        s.bind(&SockAddr::from(*addr))?;
        s.listen(backlog)?;
        Ok(s)
    }

    /// Takes ownership of an fd, making it non-blocking and close-on-exec.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if `fcntl` fails (for example, not an open fd).
    pub fn from_owned(fd: OwnedFd) -> Result<Socket> {
        let s = socket2::Socket::from(fd);
        s.set_nonblocking(true)?;
        s.set_cloexec(true)?;
        Ok(Socket {
            fd: SharedFd::new(OwnedFd::from(s)),
        })
    }

    pub(crate) fn shared(&self) -> &SharedFd {
        &self.fd
    }

    pub(crate) fn from_accepted(fd: OwnedFd) -> Socket {
        // accept4 already set NONBLOCK | CLOEXEC.
        Socket {
            fd: SharedFd::new(fd),
        }
    }

    /// Runs `f` on a borrowed `socket2` view, for options this type lacks.
    ///
    /// # Errors
    ///
    /// Whatever `f` returns.
    pub fn with<R>(&self, f: impl FnOnce(&socket2::SockRef<'_>) -> io::Result<R>) -> Result<R> {
        Ok(f(&socket2::SockRef::from(self))?)
    }

    /// `bind(2)`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`].
    pub fn bind(&self, addr: &SockAddr) -> Result<()> {
        self.with(|s| s.bind(addr))
    }

    /// `listen(2)`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`].
    pub fn listen(&self, backlog: i32) -> Result<()> {
        self.with(|s| s.listen(backlog))
    }

    /// The local address (`getsockname`).
    ///
    /// # Errors
    ///
    /// [`Error::Io`].
    pub fn local_addr(&self) -> Result<SockAddr> {
        self.with(|s| s.local_addr())
    }

    /// The peer's address (`getpeername`).
    ///
    /// # Errors
    ///
    /// [`Error::Io`], e.g. `ENOTCONN`.
    pub fn peer_addr(&self) -> Result<SockAddr> {
        self.with(|s| s.peer_addr())
    }

    /// `shutdown(2)`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`].
    pub fn shutdown(&self, how: std::net::Shutdown) -> Result<()> {
        self.with(|s| s.shutdown(how))
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.raw()
    }
}

impl std::os::fd::AsFd for Socket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<std::net::TcpListener> for Socket {
    fn from(l: std::net::TcpListener) -> Socket {
        Socket::from_owned(OwnedFd::from(l)).expect("fcntl on a valid listener")
    }
}

impl From<std::net::TcpStream> for Socket {
    fn from(s: std::net::TcpStream) -> Socket {
        Socket::from_owned(OwnedFd::from(s)).expect("fcntl on a valid stream")
    }
}

impl From<std::net::UdpSocket> for Socket {
    fn from(s: std::net::UdpSocket) -> Socket {
        Socket::from_owned(OwnedFd::from(s)).expect("fcntl on a valid socket")
    }
}

impl From<std::os::unix::net::UnixStream> for Socket {
    fn from(s: std::os::unix::net::UnixStream) -> Socket {
        Socket::from_owned(OwnedFd::from(s)).expect("fcntl on a valid stream")
    }
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let local = self.local_addr().ok().and_then(|a| a.as_socket());
        write!(f, "<Socket fd={} laddr={:?}>", self.fd.raw(), local)
    }
}

fn io_err(e: io::Error) -> Error {
    Error::from(e)
}

impl EventLoop {
    pub(crate) async fn sock_recv_into_impl<B: IoBufMut>(
        &self,
        sock: &Socket,
        buf: B,
    ) -> (Result<usize>, B) {
        if let Err(e) = self.check_open() {
            return (Err(e), buf);
        }
        let op = Op::submit(self.driver(), Recv::new(sock.fd.clone(), buf));
        let (res, op) = op.await;
        let (r, buf) = op.finish(res);
        (r.map_err(io_err), buf)
    }

    pub(crate) async fn sock_recv_impl(&self, sock: &Socket, nbytes: usize) -> Result<Vec<u8>> {
        let (r, buf) = self
            .sock_recv_into_impl(sock, Vec::with_capacity(nbytes))
            .await;
        r.map(|_| buf)
    }

    pub(crate) async fn sock_recvfrom_impl(
        &self,
        sock: &Socket,
        bufsize: usize,
    ) -> Result<(Vec<u8>, SockAddr)> {
        self.check_open()?;
        let op = Op::submit(
            self.driver(),
            RecvFrom::new(sock.fd.clone(), Vec::with_capacity(bufsize)),
        );
        let (res, op) = op.await;
        let (r, buf) = op.finish(res);
        let (_, addr) = r.map_err(io_err)?;
        Ok((buf, addr))
    }

    pub(crate) async fn sock_recvfrom_into_impl<B: IoBufMut>(
        &self,
        sock: &Socket,
        buf: B,
    ) -> (Result<(usize, SockAddr)>, B) {
        if let Err(e) = self.check_open() {
            return (Err(e), buf);
        }
        let op = Op::submit(self.driver(), RecvFrom::new(sock.fd.clone(), buf));
        let (res, op) = op.await;
        let (r, buf) = op.finish(res);
        (r.map_err(io_err), buf)
    }

    pub(crate) async fn sock_sendall_impl<B: IoBuf>(&self, sock: &Socket, data: B) -> Result<()> {
        self.check_open()?;
        let total = data.bytes_init();
        let mut op = Send::new(sock.fd.clone(), data);
        while op.offset < total {
            let (res, back) = Op::submit(self.driver(), op).await;
            op = back;
            match res {
                Ok(n) => op.offset += n as usize,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(())
    }

    pub(crate) async fn sock_sendto_impl<B: IoBuf>(
        &self,
        sock: &Socket,
        data: B,
        addr: &SockAddr,
    ) -> Result<usize> {
        self.check_open()?;
        let op = SendMsg::new(sock.fd.clone(), vec![data], Some(addr.clone()));
        let (res, _) = Op::submit(self.driver(), op).await;
        res.map(|n| n as usize).map_err(io_err)
    }

    pub(crate) async fn sock_connect_impl(&self, sock: &Socket, addr: &SockAddr) -> Result<()> {
        self.check_open()?;
        let op = Connect::new(sock.fd.clone(), addr.clone());
        let (res, _) = Op::submit(self.driver(), op).await;
        res.map(|_| ()).map_err(io_err)
    }

    pub(crate) async fn sock_accept_impl(&self, sock: &Socket) -> Result<(Socket, SockAddr)> {
        self.check_open()?;
        let op = Accept::new(sock.fd.clone());
        let (res, op) = Op::submit(self.driver(), op).await;
        let fd = res.map_err(io_err)?;
        let addr = op.addr();
        let owned = crate::driver::owned_from_accept(fd);
        Ok((Socket::from_accepted(owned), addr))
    }
}

/// Accepts connection after connection from one listening socket.
///
/// On the proactor this is one multishot `ACCEPT` submission that yields a
/// completion per connection (re-armed when the kernel ends it); on the
/// selector, `accept4` until `EAGAIN`, then readiness. Dropping it cancels
/// the accept; connections the kernel still accepts for it are closed, not
/// leaked.
///
/// # Examples
///
/// ```
/// use ringloop::prelude::*;
/// use ringloop::Acceptor;
/// ringloop::run(async {
///     let lp = get_running_loop().unwrap();
///     let listener = Socket::tcp_listener(&"127.0.0.1:0".parse().unwrap(), 16).unwrap();
///     let addr = listener.local_addr().unwrap();
///     let mut acceptor = Acceptor::new(&lp, &listener);
///     let client = Socket::tcp_for(&addr.as_socket().unwrap()).unwrap();
///     lp.sock_connect(&client, &addr).await.unwrap();
///     let conn = acceptor.accept().await.unwrap();
///     assert_eq!(conn.peer_addr().unwrap().as_socket(), client.local_addr().unwrap().as_socket());
/// }).unwrap();
/// ```
pub struct Acceptor {
    lp: EventLoop,
    listener: SharedFd,
    op: Option<MultiOp>,
}

impl Acceptor {
    /// An acceptor on `listener` (which must be listening).
    pub fn new(lp: &EventLoop, listener: &Socket) -> Acceptor {
        Acceptor {
            lp: lp.clone(),
            listener: listener.fd.clone(),
            op: None,
        }
    }

    /// The next connection.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from accept (`EMFILE`, `ENFILE`, …); the acceptor stays
    /// usable and the next call tries again.
    pub async fn accept(&mut self) -> Result<Socket> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<Socket>> {
        use std::task::Poll;
        if let Err(e) = self.lp.check_open() {
            return Poll::Ready(Err(e));
        }
        loop {
            let op = self.op.get_or_insert_with(|| {
                MultiOp::submit(
                    self.lp.driver(),
                    Box::new(AcceptMulti {
                        fd: self.listener.clone(),
                    }),
                )
            });
            match op.poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(fd))) => {
                    let owned = crate::driver::owned_from_accept(fd);
                    return Poll::Ready(Ok(Socket::from_accepted(owned)));
                }
                Poll::Ready(Some(Err(e))) => {
                    if op.is_finished() {
                        self.op = None;
                    }
                    return Poll::Ready(Err(io_err(e)));
                }
                // The kernel ended the multishot: arm a new one.
                Poll::Ready(None) => self.op = None,
            }
        }
    }
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<Acceptor fd={}>", self.listener.raw())
    }
}
