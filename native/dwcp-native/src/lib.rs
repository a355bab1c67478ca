//! DWCP's native helpers, loaded through native/dwcp/native-addon.ts; data-extents.ts and chunking.ts each fall back
//! to TypeScript without them, and chunk-hash.ts offers only sha256 to peers when BLAKE3 is missing.

use std::ffi::CString;
use std::sync::OnceLock;

use napi::bindgen_prelude::{Buffer, Uint32Array};
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

/// The FastCDC gear table, as chunking.ts derives it. It is defined in TypeScript only, so that the one definition
/// of where chunks are cut is the one every host shares; this side keeps the first table it is given.
static GEAR: OnceLock<[u32; 256]> = OnceLock::new();

/// Takes the gear table (256 entries). Every thread that loads chunking.ts calls this with the same table; a
/// different one is refused, since two tables in one process would cut the same content in two ways.
#[napi]
pub fn set_gear_table(table: &[i32]) -> Result<()> {
    let given: [u32; 256] = table
        .iter()
        .map(|&v| v as u32)
        .collect::<Vec<u32>>()
        .try_into()
        .map_err(|_| Error::new(Status::InvalidArg, format!("the gear table has 256 entries, got {}", table.len())))?;
    if *GEAR.get_or_init(|| given) != given {
        return Err(Error::new(Status::InvalidArg, "a different gear table was set before"));
    }
    Ok(())
}

/// One block's chunking, with everything chunking.ts derives from its ChunkingParams (masks, where a zero run is
/// cut) passed in rather than re-derived here, so both sides follow the one definition.
#[napi(object)]
pub struct CutInput {
    pub min_bytes: u32,
    pub avg_bytes: u32,
    pub max_bytes: u32,
    pub fixed: bool,
    pub small_mask: i32,
    pub large_mask: i32,
    /// chunking.ts's zeroCut: where a run of zeros is cut, 0 when only maxBytes cuts it.
    pub zero_cut: u32,
    /// No more data follows: the tail is a chunk of its own instead of waiting for more.
    #[napi(js_name = "final")]
    pub is_final: bool,
}

/// The lengths of the chunks nextChunkLength (chunking.ts) cuts from the start of `data`, one after another, up to
/// the first answer of 0 (more data needed) or the end of the data: a whole read block in one call, since a call
/// per chunk costs more than cutting a small chunk.
#[napi]
pub fn cut_chunks(data: &[u8], input: CutInput) -> Result<Uint32Array> {
    let gear = GEAR
        .get()
        .ok_or_else(|| Error::new(Status::GenericFailure, "setGearTable must be called before cutChunks"))?;
    let p = Cut {
        min: input.min_bytes as usize,
        avg: input.avg_bytes as usize,
        max: input.max_bytes as usize,
        fixed: input.fixed,
        small: input.small_mask as u32,
        large: input.large_mask as u32,
        zero_cut: if input.zero_cut == 0 { input.max_bytes as usize } else { input.zero_cut as usize },
        last: input.is_final,
    };
    let mut lengths = Vec::with_capacity(data.len() / p.avg.max(1) + 1);
    let mut start = 0;
    loop {
        let length = next_chunk_length(data, start, &p, gear);
        if length == 0 {
            break;
        }
        lengths.push(length as u32);
        start += length;
    }
    Ok(Uint32Array::new(lengths))
}

struct Cut {
    min: usize,
    avg: usize,
    max: usize,
    fixed: bool,
    small: u32,
    large: u32,
    zero_cut: usize,
    last: bool,
}

/// chunking.ts's nextChunkLength over data[start..], step for step.
fn next_chunk_length(data: &[u8], start: usize, p: &Cut, gear: &[u32; 256]) -> usize {
    let available = data.len() - start;
    if available == 0 {
        return 0;
    }
    let rest = if p.last { available } else { 0 };
    if p.fixed {
        return if available >= p.max { p.max } else { rest };
    }
    if available <= p.min {
        return rest;
    }
    let limit = available.min(p.max);
    if p.zero_cut <= limit && data[start] == 0 && is_zero(&data[start..start + p.zero_cut]) {
        return p.zero_cut;
    }
    let cut = find_cut(&data[start..start + limit], p, gear);
    if cut > 0 {
        return cut;
    }
    if limit == p.max {
        return limit;
    }
    rest
}

/// chunking.ts's findCut over the whole of `data` (its limit): the JS int32 arithmetic wraps as u32 does.
fn find_cut(data: &[u8], p: &Cut, gear: &[u32; 256]) -> usize {
    let normal = data.len().min(p.avg);
    let mut hash: u32 = 0;
    let mut i = p.min;
    while i < normal {
        hash = (hash << 1).wrapping_add(gear[data[i] as usize]);
        if hash & p.small == 0 {
            return i + 1;
        }
        i += 1;
    }
    while i < data.len() {
        hash = (hash << 1).wrapping_add(gear[data[i] as usize]);
        if hash & p.large == 0 {
            return i + 1;
        }
        i += 1;
    }
    0
}

/// All bytes zero: the first is, and each equals the next. That compare is one memcmp (libc's, vectorized, stopping
/// at the first difference), several times faster here than OR-ing the bytes in a loop; zero runs are half of a
/// sparse disk image's bytes.
fn is_zero(data: &[u8]) -> bool {
    match data.first() {
        None => true,
        Some(&first) => first == 0 && data[1..] == data[..data.len() - 1],
    }
}

/// The BLAKE3 hash of one chunk (32 bytes): the chunk hash peers agree on when both have this addon, 2.3 times
/// sha256's speed on this project's benchmark machine (bench/dwcp/hash-cost.ts) with the same collision resistance.
/// One thread on purpose: it runs in a pool worker, beside others.
#[napi]
pub fn blake3_hash(data: &[u8]) -> Buffer {
    blake3::hash(data).as_bytes().to_vec().into()
}
