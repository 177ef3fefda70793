//! Reading the whole `LINKS` map every tick, many links per system call.
//!
//! aya's map iterator asks the kernel twice per link (the next key, then its value):
//! at the table's 16,384 links and ten ticks a second that is 330k `bpf()` calls a
//! second on every host, and in the lab the calls were a sixth of the agents' CPU.
//! `BPF_MAP_LOOKUP_BATCH` (Linux 5.6, hash and LRU hash maps, per-CPU ones too) copies
//! many keys and their per-CPU values in one call. A kernel that refuses it (an older
//! one, or one built without it) is read link by link, as before.
use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
};

use aya::maps::{Map, MapError, PerCpuHashMap};
use faultline_ebpf::{LinkKey, LinkStats};

use super::{LinkTotals, ProbeError};

/// `enum bpf_cmd`'s `BPF_MAP_LOOKUP_BATCH` (uapi/linux/bpf.h; not in the libc crate).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Values copied per call at most, bytes: a call covers many links on a small host
/// and still dozens on one with hundreds of CPUs, without a large buffer.
const VALUE_BUFFER: usize = 1 << 20;

/// The `batch` member of `union bpf_attr` (uapi/linux/bpf.h). The kernel zero-fills
/// what a shorter attribute leaves out.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Reads every link of the `LINKS` map, summed over CPUs.
pub(crate) struct LinksReader {
    /// A duplicate of the map's descriptor, for the batch calls aya does not make.
    fd: OwnedFd,
    /// Possible CPUs: a per-CPU value is one `LinkStats` for each.
    cpus: usize,
    /// Links per call.
    per_call: usize,
    keys: Vec<LinkKey>,
    values: Vec<LinkStats>,
    /// False once the kernel refused a batch: read link by link from then on.
    batches: bool,
}

impl LinksReader {
    pub(crate) fn new(map: &Map) -> Result<Self, ProbeError> {
        let map_err = |source| ProbeError::Map {
            name: "LINKS",
            source,
        };
        // The same check aya makes before reading it one link at a time.
        PerCpuHashMap::<_, LinkKey, LinkStats>::try_from(map).map_err(map_err)?;
        let (Map::PerCpuLruHashMap(data) | Map::PerCpuHashMap(data)) = map else {
            unreachable!("a per-CPU hash map, checked just above");
        };
        // A duplicate, not a new descriptor from the map's id: that needs CAP_SYS_ADMIN,
        // which the service's unit does not grant.
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| map_err(MapError::IoError(e)))?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(path, io_error)| {
                map_err(MapError::SyscallError(aya::sys::SyscallError {
                    call: path,
                    io_error,
                }))
            })?
            .max(1);
        Ok(Self {
            fd,
            cpus,
            per_call: (VALUE_BUFFER / (cpus * size_of::<LinkStats>())).max(16),
            keys: Vec::new(),
            values: Vec::new(),
            batches: true,
        })
    }

    /// How many links each batch call asks for; tests read a few links in several.
    pub(crate) fn set_links_per_call(&mut self, n: usize) {
        self.per_call = n.max(1);
    }

    /// Every link's totals into `out` (cleared first). `map` is the same `LINKS` map,
    /// read link by link if the kernel refuses batches.
    pub(crate) fn read_into(
        &mut self,
        map: &Map,
        out: &mut HashMap<LinkKey, LinkTotals>,
    ) -> Result<(), ProbeError> {
        out.clear();
        if self.batches {
            match self.read_batches(out) {
                Ok(()) => return Ok(()),
                // Nothing was read yet when a kernel refuses the command itself.
                Err(e) if out.is_empty() && refused(&e) => {
                    tracing::info!(
                        error = %e,
                        "this kernel does not read maps in batches; reading links one by one"
                    );
                    self.batches = false;
                }
                Err(io_error) => {
                    return Err(ProbeError::Map {
                        name: "LINKS",
                        source: MapError::SyscallError(aya::sys::SyscallError {
                            call: "bpf_map_lookup_batch",
                            io_error,
                        }),
                    });
                }
            }
        }
        read_one_by_one(map, out)
    }

    fn read_batches(&mut self, out: &mut HashMap<LinkKey, LinkTotals>) -> io::Result<()> {
        self.keys.resize(self.per_call, LinkKey::default());
        self.values
            .resize(self.per_call * self.cpus, LinkStats::ZERO);
        // The position in the table, as the kernel left it (a bucket index for hash
        // maps: four bytes; eight kept for any map type).
        let (mut position, mut next) = (0u64, 0u64);
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    (&raw const position) as u64
                },
                out_batch: (&raw mut next) as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: u32::try_from(self.per_call).unwrap_or(u32::MAX),
                map_fd: u32::try_from(self.fd.as_raw_fd()).unwrap_or(u32::MAX),
                ..BatchAttr::default()
            };
            // SAFETY: `attr` names buffers of `count` keys and `count × cpus` values,
            // each the map's key and per-CPU value layout (the programs' own types),
            // and two 8-byte batch positions; all outlive the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &raw mut attr,
                    size_of::<BatchAttr>(),
                )
            };
            let error = (rc < 0).then(io::Error::last_os_error);
            if attr.count == 0
                && error.as_ref().and_then(io::Error::raw_os_error) == Some(libc::ENOSPC)
            {
                // One bucket holds more links than a call asks for: ask for more,
                // from the same place.
                self.per_call *= 2;
                self.keys.resize(self.per_call, LinkKey::default());
                self.values
                    .resize(self.per_call * self.cpus, LinkStats::ZERO);
                continue;
            }
            // ENOENT ends the table, and may come with the last links.
            let got = match &error {
                None => attr.count as usize,
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => attr.count as usize,
                Some(_) => 0,
            };
            for (i, key) in self.keys[..got.min(self.per_call)].iter().enumerate() {
                let per_cpu = &self.values[i * self.cpus..(i + 1) * self.cpus];
                out.insert(*key, LinkTotals::sum(per_cpu));
            }
            match error {
                None => {}
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Some(e) => return Err(e),
            }
            position = next;
            first = false;
        }
    }
}

/// The kernel does not know the command, or not for this map type.
fn refused(e: &io::Error) -> bool {
    // 524: the kernel's ENOTSUPP, which it returns for map types without batches.
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
    )
}

/// Two calls per link: the next key, then its value.
pub(crate) fn read_one_by_one(
    map: &Map,
    out: &mut HashMap<LinkKey, LinkTotals>,
) -> Result<(), ProbeError> {
    let map_err = |source| ProbeError::Map {
        name: "LINKS",
        source,
    };
    let links: PerCpuHashMap<_, LinkKey, LinkStats> =
        PerCpuHashMap::try_from(map).map_err(map_err)?;
    out.clear();
    for entry in links.iter() {
        match entry {
            Ok((key, per_cpu)) => {
                out.insert(key, LinkTotals::sum(per_cpu.iter()));
            }
            // The LRU evicted the key between listing and lookup: skip it.
            Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(map_err(source)),
        }
    }
    Ok(())
}
