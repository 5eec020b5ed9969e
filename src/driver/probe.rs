//! Can io_uring run the proactor here? Sets up a ring the way the proactor
//! does and checks every opcode and kernel feature it relies on (as monoio's
//! `uring_detect` and compio's `driver_type` do).

use io_uring::{Probe, opcode};

/// `Ok` if the proactor can run, else why not (for the log and for errors).
pub(crate) fn probe_uring() -> Result<(), String> {
    let ring = super::uring::build_ring().map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => format!(
            "io_uring_setup refused with EPERM (a seccomp filter such as Docker's default profile, or kernel.io_uring_disabled): {e}"
        ),
        Some(libc::ENOSYS) => format!("this kernel has no io_uring: {e}"),
        _ => format!("io_uring_setup failed: {e}"),
    })?;
    let params = ring.params();
    if !params.is_feature_ext_arg() {
        return Err("the kernel lacks IORING_FEAT_EXT_ARG (needs Linux 5.11+)".into());
    }
    if !params.is_feature_nodrop() {
        return Err("the kernel lacks IORING_FEAT_NODROP (needs Linux 5.5+)".into());
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    let needed = [
        ("ACCEPT", opcode::Accept::CODE),
        ("CONNECT", opcode::Connect::CODE),
        ("RECV", opcode::Recv::CODE),
        ("SEND", opcode::Send::CODE),
        ("RECVMSG", opcode::RecvMsg::CODE),
        ("SENDMSG", opcode::SendMsg::CODE),
        ("READ", opcode::Read::CODE),
        ("WRITE", opcode::Write::CODE),
        ("POLL_ADD", opcode::PollAdd::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
        // Only in kernels with multishot accept (5.19+) among the others.
        ("SOCKET", opcode::Socket::CODE),
    ];
    for (name, code) in needed {
        if !probe.is_supported(code) {
            return Err(format!("the kernel's io_uring lacks opcode {name}"));
        }
    }
    Ok(())
}
