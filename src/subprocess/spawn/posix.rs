//! The common case through glibc's `posix_spawn`: `clone(CLONE_VM |
//! CLONE_VFORK)` and exec, with no copy of the parent's page tables (what
//! makes fork + exec about twice as dear in CPU for a loop's process).
//!
//! What glibc does in the child, in order: `SIGPIPE` back to its default,
//! `setsid` (a new session), `setpgid` (the process group), the standard
//! streams `dup2`'d onto 0-2, every fd from 3 up closed (`closefrom`),
//! `chdir`, exec. The signal mask is the parent's, as
//! std's `Command` (both its paths) and CPython's `subprocess` leave it.
//!
//! A bare program name is looked up in the parent's `PATH` by
//! `posix_spawnp`, but when the caller gives the child's whole
//! environment std looks it up in *that* `PATH` (`execvp` after swapping
//! `environ`; glibc's `/bin:/usr/bin` if it has none): [`search`] does the
//! same here, in the parent, and the child gets a path.
//!
//! `Ok(None)` from [`spawn`]: this glibc can't say it (no
//! `posix_spawn_file_actions_addclosefrom_np` before 2.34, no
//! `addchdir_np` before 2.29, no `POSIX_SPAWN_SETSID` before 2.26: looked
//! up at run time, so that the binary still loads there), and the caller
//! takes the fork + exec path.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString, c_char, c_int, c_void};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

/// What to start (see [`SubprocessOptions`](super::SubprocessOptions)).
pub(super) struct Request<'a> {
    pub(super) program: &'a OsStr,
    pub(super) args: &'a [OsString],
    /// The sources of the child's fds 0-2 (`None`: the parent's own).
    pub(super) stdio: &'a [Option<OwnedFd>; 3],
    pub(super) env: Option<&'a [(OsString, OsString)]>,
    pub(super) cwd: Option<&'a Path>,
    pub(super) process_group: Option<i32>,
    pub(super) new_session: bool,
}

type CloseFromFn = unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, c_int) -> c_int;
type ChdirFn = unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, *const c_char) -> c_int;

/// The file actions newer than glibc 2.26, if this glibc has them.
struct Actions2 {
    closefrom: Option<CloseFromFn>,
    chdir: Option<ChdirFn>,
}

fn actions2() -> &'static Actions2 {
    static FNS: OnceLock<Actions2> = OnceLock::new();
    FNS.get_or_init(|| {
        let closefrom = lookup(c"posix_spawn_file_actions_addclosefrom_np");
        let chdir = lookup(c"posix_spawn_file_actions_addchdir_np");
        Actions2 {
            // SAFETY: a symbol of that name is glibc's function, whose C
            // signature (actions pointer, int) -> int is `CloseFromFn`'s.
            closefrom: closefrom
                .map(|p| unsafe { std::mem::transmute::<*mut c_void, CloseFromFn>(p) }),
            // SAFETY: likewise, (actions pointer, const char *) -> int.
            chdir: chdir.map(|p| unsafe { std::mem::transmute::<*mut c_void, ChdirFn>(p) }),
        }
    })
}

/// A libc function by name, if this libc has it.
fn lookup(name: &std::ffi::CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym only looks the NUL-terminated name up in the objects
    // already loaded (RTLD_DEFAULT); a missing one gives null.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// Starts the child: `Ok(Some(pid))`, `Ok(None)` when this glibc can't
/// (the caller falls back), or the error std would give (a missing
/// program: `NotFound`).
pub(super) fn spawn(req: &Request<'_>) -> io::Result<Option<u32>> {
    let fns = actions2();
    let Some(closefrom) = fns.closefrom else {
        return Ok(None);
    };
    let chdir = match (req.cwd, fns.chdir) {
        (None, _) => None,
        (Some(_), Some(f)) => Some(f),
        (Some(_), None) => return Ok(None),
    };
    match spawn_with(req, closefrom, chdir) {
        // An attribute or action this glibc (or kernel) doesn't know.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) => Ok(None),
        r => r.map(Some),
    }
}

fn spawn_with(
    req: &Request<'_>,
    closefrom: CloseFromFn,
    chdir: Option<ChdirFn>,
) -> io::Result<u32> {
    let program = cstring(req.program.as_bytes())?;
    let args = req
        .args
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<io::Result<Vec<_>>>()?;
    let argv: Vec<*mut c_char> = std::iter::once(&program)
        .chain(&args)
        .map(|a| a.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect();

    // The environment, as std builds it: one value a name, the last given.
    let env: Option<BTreeMap<&OsStr, &OsStr>> = req
        .env
        .map(|vars| vars.iter().map(|(k, v)| (&**k, &**v)).collect());
    let env_strings = match &env {
        Some(vars) => Some(
            vars.iter()
                .map(|(k, v)| {
                    let mut kv = Vec::with_capacity(k.len() + 1 + v.len());
                    kv.extend_from_slice(k.as_bytes());
                    kv.push(b'=');
                    kv.extend_from_slice(v.as_bytes());
                    cstring(&kv)
                })
                .collect::<io::Result<Vec<_>>>()?,
        ),
        None => None,
    };
    let envp: Option<Vec<*mut c_char>> = env_strings.as_ref().map(|vars| {
        vars.iter()
            .map(|kv| kv.as_ptr().cast_mut())
            .chain(std::iter::once(std::ptr::null_mut()))
            .collect()
    });
    let envp: *const *mut c_char = match &envp {
        Some(v) => v.as_ptr(),
        // SAFETY: a copy of the pointer glibc keeps; changing the
        // environment meanwhile is `std::env::set_var`'s caller's to rule
        // out (as for any libc reader of it).
        None => unsafe { libc::environ }.cast_const(),
    };

    // A bare name in the child's own PATH, when the caller gave one.
    let path = match &env {
        Some(vars) if !req.program.as_bytes().contains(&b'/') => {
            let dirs = vars
                .get(OsStr::new("PATH"))
                .map_or(&b"/bin:/usr/bin"[..], |p| p.as_bytes());
            Some(search(req.program.as_bytes(), dirs, req.cwd)?)
        }
        _ => None,
    };

    // Each source above 2, so that no `dup2` onto 0-2 overwrites a source
    // still to come (the copies close here once the child has its own).
    let mut lifted: Vec<OwnedFd> = Vec::new();
    let mut sources = [-1; 3];
    for (src, fd) in sources.iter_mut().zip(req.stdio) {
        if let Some(fd) = fd {
            *src = fd.as_raw_fd();
            if *src <= 2 {
                // (F_DUPFD_CLOEXEC from 3.)
                let copy = fd.as_fd().try_clone_to_owned()?;
                *src = copy.as_raw_fd();
                lifted.push(copy);
            }
        }
    }

    let mut actions = FileActions::new()?;
    for (target, &src) in (0..).zip(&sources) {
        if src >= 0 {
            // SAFETY: `actions` is initialised; both fds are plain ints
            // (the source stays open until the spawn returns).
            nz(unsafe { libc::posix_spawn_file_actions_adddup2(&mut actions.0, src, target) })?;
        }
    }
    // SAFETY: `closefrom` is glibc's `addclosefrom_np`; `actions` is initialised.
    nz(unsafe { closefrom(&mut actions.0, 3) })?;
    let cwd = match (req.cwd, chdir) {
        (Some(cwd), Some(f)) => {
            let cwd = cstring(cwd.as_os_str().as_bytes())?;
            // SAFETY: `f` is glibc's `addchdir_np`, which copies the string.
            nz(unsafe { f(&mut actions.0, cwd.as_ptr()) })?;
            Some(cwd)
        }
        _ => None,
    };

    let mut attr = SpawnAttr::new()?;
    let mut flags = libc::POSIX_SPAWN_SETSIGDEF;
    let mut defaults = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; SIGPIPE is a valid signal
    // (std ignores it in the parent; an ignored signal stays ignored
    // across exec, so the child gets it back at its default, as std does).
    unsafe {
        libc::sigemptyset(defaults.as_mut_ptr());
        libc::sigaddset(defaults.as_mut_ptr(), libc::SIGPIPE);
    }
    // SAFETY: `attr` is initialised; `defaults` was initialised above.
    nz(unsafe { libc::posix_spawnattr_setsigdefault(&mut attr.0, defaults.as_ptr()) })?;
    if let Some(pg) = req.process_group {
        flags |= libc::POSIX_SPAWN_SETPGROUP;
        // SAFETY: `attr` is initialised.
        nz(unsafe { libc::posix_spawnattr_setpgroup(&mut attr.0, pg) })?;
    }
    let mut flags = flags as libc::c_short;
    if req.new_session {
        flags |= libc::POSIX_SPAWN_SETSID;
    }
    // SAFETY: `attr` is initialised; an unknown flag gives EINVAL.
    nz(unsafe { libc::posix_spawnattr_setflags(&mut attr.0, flags) })?;

    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is to a NUL-terminated string or a
    // null-terminated array of them that outlives the call (`program`,
    // `args`, `argv`, `env_strings`, `envp`, `path`); `actions` and
    // `attr` are initialised; the stdio sources are open.
    let r = unsafe {
        match &path {
            Some(path) => libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                &actions.0,
                &attr.0,
                argv.as_ptr(),
                envp,
            ),
            None => libc::posix_spawnp(
                &mut pid,
                program.as_ptr(),
                &actions.0,
                &attr.0,
                argv.as_ptr(),
                envp,
            ),
        }
    };
    drop((lifted, cwd));
    nz(r)?;
    Ok(pid as u32)
}

/// `execvp`'s search of `dirs` for `file`, in the parent: the first
/// executable regular file (an empty entry is the child's directory);
/// else EACCES if one was found but not executable, else ENOENT.
fn search(file: &[u8], dirs: &[u8], cwd: Option<&Path>) -> io::Result<CString> {
    let mut denied = false;
    if !file.is_empty() {
        for dir in dirs.split(|&b| b == b':') {
            let mut cand = Vec::with_capacity(dir.len() + 1 + file.len());
            if !dir.is_empty() {
                cand.extend_from_slice(dir);
                cand.push(b'/');
            }
            cand.extend_from_slice(file);
            let rel = Path::new(OsStr::from_bytes(&cand));
            // (The child looks after its chdir.)
            let probe = match cwd {
                Some(cwd) if rel.is_relative() => cwd.join(rel),
                _ => rel.to_path_buf(),
            };
            match std::fs::metadata(&probe) {
                Ok(m) if m.is_file() => {
                    if nix::unistd::access(&probe, nix::unistd::AccessFlags::X_OK).is_ok() {
                        return cstring(&cand);
                    }
                    denied = true;
                }
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => denied = true,
                _ => {}
            }
        }
    }
    Err(io::Error::from_raw_os_error(if denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }))
}

/// std's error for a NUL inside a program, argument or variable.
fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

/// posix_spawn's functions give the error number back (not in `errno`).
fn nz(r: c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// `posix_spawn_file_actions_t`, destroyed on drop (glibc's holds a
/// pointer to its actions, nothing that points into itself: it moves).
struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<FileActions> {
        let mut a = MaybeUninit::uninit();
        // SAFETY: init writes the whole object.
        nz(unsafe { libc::posix_spawn_file_actions_init(a.as_mut_ptr()) })?;
        // SAFETY: initialised just above.
        Ok(FileActions(unsafe { a.assume_init() }))
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once, here.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// `posix_spawnattr_t`, destroyed on drop (plain data: it moves).
struct SpawnAttr(libc::posix_spawnattr_t);

impl SpawnAttr {
    fn new() -> io::Result<SpawnAttr> {
        let mut a = MaybeUninit::uninit();
        // SAFETY: init writes the whole object.
        nz(unsafe { libc::posix_spawnattr_init(a.as_mut_ptr()) })?;
        // SAFETY: initialised just above.
        Ok(SpawnAttr(unsafe { a.assume_init() }))
    }
}

impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once, here.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}
