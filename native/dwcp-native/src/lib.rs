//! DWCP's native helpers, loaded by native/dwcp/data-extents.ts (which falls back to TypeScript without them).

use std::ffi::CString;

use napi::{Error, Result, Status};
use napi_derive::napi;

/// The data extents of a file as flat `[start, end, start, end, ...]` byte offsets, found with
/// `lseek(SEEK_DATA/SEEK_HOLE)`: everything outside them is a hole, which reads as zeros without being stored.
/// A file system without hole support reports the whole file as one extent, which is what lseek does there.
#[napi]
pub fn data_extents(path: String) -> Result<Vec<f64>> {
    let c_path = CString::new(path.as_str()).map_err(|_| Error::new(Status::InvalidArg, "path contains a NUL byte"))?;
    // SAFETY: c_path is a valid NUL-terminated string; the descriptor is closed on every path below.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os_error("open", &path));
    }
    let result = extents_of(fd, &path);
    // SAFETY: fd was opened above and is not used after this.
    unsafe { libc::close(fd) };
    result
}

fn extents_of(fd: libc::c_int, path: &str) -> Result<Vec<f64>> {
    // SAFETY: fstat writes into a zeroed stat of the right type.
    let mut info: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut info) } < 0 {
        return Err(os_error("fstat", path));
    }
    let size = info.st_size;
    let mut extents = Vec::new();
    let mut at: libc::off_t = 0;
    while at < size {
        // SAFETY: plain syscalls on a descriptor this function owns.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            // ENXIO: no data after `at`, the rest of the file is a hole.
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(os_error("lseek(SEEK_DATA)", path));
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(os_error("lseek(SEEK_HOLE)", path));
        }
        extents.push(data as f64);
        extents.push(hole.min(size) as f64);
        at = hole;
    }
    Ok(extents)
}

fn os_error(call: &str, path: &str) -> Error {
    Error::new(Status::GenericFailure, format!("{call} {path}: {}", std::io::Error::last_os_error()))
}
