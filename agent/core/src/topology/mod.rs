//! The operator's topology: sites contain cabinets, cabinets racks, racks hosts.
//!
//! It enters as a TOML file (see [`file`]), is validated whole (every error names the
//! file, line and field), and leaves as a [`Topology`]: a table of entities with parent
//! links, and a longest-prefix-match lookup from a peer address to where it sits.
mod file;
mod peers;

use std::{collections::HashMap, fmt, net::IpAddr, path::Path, sync::Arc};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::capped_read::{self, CappedReadError};
use file::Source;
pub use file::TopologyError;
pub use peers::{DEFAULT_FANOUT, GUARANTEED_FANOUT, PeerIndex, auto_peers};

/// A level of the failure-domain hierarchy, from the smallest up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Host,
    Rack,
    Cabinet,
    Site,
}

impl Level {
    pub const ALL: [Self; 4] = [Self::Host, Self::Rack, Self::Cabinet, Self::Site];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Rack => "rack",
            Self::Cabinet => "cabinet",
            Self::Site => "site",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == text)
    }

    /// Position from the bottom: host 0 … site 3.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The level above, if any.
    pub const fn up(self) -> Option<Self> {
        match self {
            Self::Host => Some(Self::Rack),
            Self::Rack => Some(Self::Cabinet),
            Self::Cabinet => Some(Self::Site),
            Self::Site => None,
        }
    }
}

/// One value per level, indexed by [`Level`] (not by a bare number).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerLevel<T>(pub [T; 4]);

impl<T> std::ops::Index<Level> for PerLevel<T> {
    type Output = T;
    fn index(&self, level: Level) -> &T {
        &self.0[level.index()]
    }
}

impl<T> std::ops::IndexMut<Level> for PerLevel<T> {
    fn index_mut(&mut self, level: Level) -> &mut T {
        &mut self.0[level.index()]
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Index of an entity in its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId(pub u32);

impl EntityId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One failure domain: its level, its path (`dc-a/c1/r1`) and its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityInfo {
    pub level: Level,
    pub path: Arc<str>,
    pub parent: Option<EntityId>,
}

/// Where a peer address sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A host listed in the file with this address.
    Host(EntityId),
    /// Not listed, but inside a rack's prefix: a host of that rack named by its address.
    InRack(EntityId),
    /// In no prefix: tracked as a host of its own, outside every rack.
    Unplaced,
}

/// Path prefix of hosts that sit in no rack.
pub const UNPLACED: &str = "unplaced";

/// The largest topology file read. A 100,000-host file with one address per host is
/// about 8 MB, so 16 MiB leaves room for twice that (or longer names, more addresses).
/// The cap bounds memory too: while parsing, the TOML document takes about 30 times the
/// text (~240 MB at 100,000 hosts), so a 16 MiB file peaks near half a gigabyte.
pub const MAX_TOPOLOGY_BYTES: u64 = 16 << 20;

/// A validated topology.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    entities: Vec<EntityInfo>,
    by_path: HashMap<Arc<str>, EntityId>,
    host_addresses: HashMap<IpAddr, EntityId>,
    /// Each listed host's addresses in file order: the first is where its agent is
    /// reached (`peers = "auto"`).
    addresses_of: HashMap<EntityId, Vec<IpAddr>>,
    /// Rack prefixes keyed by (masked network address, length).
    prefixes: HashMap<(IpAddr, u8), EntityId>,
    /// Distinct prefix lengths, longest first, per family (v4, v6).
    lengths_v4: Vec<u8>,
    lengths_v6: Vec<u8>,
}

/// Two topologies are the same when they place every address the same way: the same
/// entities, host addresses and rack prefixes (indexes derived from them aside).
impl PartialEq for Topology {
    fn eq(&self, other: &Self) -> bool {
        self.entities == other.entities
            && self.addresses_of == other.addresses_of
            && self.prefixes == other.prefixes
    }
}

impl Topology {
    /// Reads and validates a topology file, refusing one over [`MAX_TOPOLOGY_BYTES`].
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        Self::load_capped(path, MAX_TOPOLOGY_BYTES)
    }

    /// [`Topology::load`] with another cap (tests).
    pub fn load_capped(path: &Path, cap: u64) -> Result<Self, TopologyError> {
        let text = capped_read::read_to_string(path, cap).map_err(|e| match e {
            CappedReadError::Io(source) => TopologyError::Read {
                path: path.to_owned(),
                source,
            },
            CappedReadError::TooLarge { cap } => TopologyError::TooLarge {
                path: path.to_owned(),
                cap,
            },
        })?;
        Self::parse(path, &text)
    }

    /// Validates the text of a topology file; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, TopologyError> {
        let src = Source::new(path, text);
        let file = src.parse()?;
        let mut topo = Self::default();
        // Where each prefix and address was first given, as a byte offset: turned into a
        // line number only for the error about a duplicate.
        let mut prefix_offsets: HashMap<(IpAddr, u8), usize> = HashMap::new();
        let mut address_offsets: HashMap<IpAddr, usize> = HashMap::new();

        for (i, site) in file.site.iter().enumerate() {
            let name = check_name(&src, &site.name, format!("site[{i}].name"))?;
            topo.add(
                &src,
                &site.name,
                format!("site[{i}].name"),
                Level::Site,
                name.to_owned(),
                None,
            )?;
        }
        for (i, cab) in file.cabinet.iter().enumerate() {
            let name = check_name(&src, &cab.name, format!("cabinet[{i}].name"))?;
            let parent = topo.parent(&src, &cab.site, format!("cabinet[{i}].site"), Level::Site)?;
            let path = format!("{}/{name}", cab.site.get_ref());
            topo.add(
                &src,
                &cab.name,
                format!("cabinet[{i}].name"),
                Level::Cabinet,
                path,
                Some(parent),
            )?;
        }
        for (i, rack) in file.rack.iter().enumerate() {
            let name = check_name(&src, &rack.name, format!("rack[{i}].name"))?;
            let parent = topo.parent(
                &src,
                &rack.cabinet,
                format!("rack[{i}].cabinet"),
                Level::Cabinet,
            )?;
            let path = format!("{}/{name}", rack.cabinet.get_ref());
            let id = topo.add(
                &src,
                &rack.name,
                format!("rack[{i}].name"),
                Level::Rack,
                path,
                Some(parent),
            )?;
            for (j, text) in rack.prefixes.iter().enumerate() {
                let field = format!("rack[{i}].prefixes[{j}]");
                let prefix = parse_prefix(text.get_ref())
                    .map_err(|m| src.invalid(text, field.clone(), m))?;
                if let Some(first) = prefix_offsets.insert(prefix, text.span().start) {
                    return Err(src.invalid(
                        text,
                        field,
                        format!(
                            "prefix {} also given on line {}",
                            text.get_ref(),
                            src.line_of(first)
                        ),
                    ));
                }
                topo.prefixes.insert(prefix, id);
            }
        }
        for (i, host) in file.host.iter().enumerate() {
            let name = check_name(&src, &host.name, format!("host[{i}].name"))?;
            let parent = topo.parent(&src, &host.rack, format!("host[{i}].rack"), Level::Rack)?;
            let path = format!("{}/{name}", host.rack.get_ref());
            let id = topo.add(
                &src,
                &host.name,
                format!("host[{i}].name"),
                Level::Host,
                path,
                Some(parent),
            )?;
            for (j, text) in host.addresses.iter().enumerate() {
                let field = format!("host[{i}].addresses[{j}]");
                let addr =
                    parse_addr(text.get_ref()).map_err(|m| src.invalid(text, field.clone(), m))?;
                if let Some(first) = address_offsets.insert(addr, text.span().start) {
                    return Err(src.invalid(
                        text,
                        field,
                        format!("address {addr} also given on line {}", src.line_of(first)),
                    ));
                }
                topo.host_addresses.insert(addr, id);
                topo.addresses_of.entry(id).or_default().push(addr);
            }
        }
        for &(net, len) in topo.prefixes.keys() {
            let lengths = if net.is_ipv4() {
                &mut topo.lengths_v4
            } else {
                &mut topo.lengths_v6
            };
            if !lengths.contains(&len) {
                lengths.push(len);
            }
        }
        topo.lengths_v4.sort_unstable_by(|a, b| b.cmp(a));
        topo.lengths_v6.sort_unstable_by(|a, b| b.cmp(a));
        Ok(topo)
    }

    fn add(
        &mut self,
        src: &Source<'_>,
        at: &Spanned<String>,
        field: String,
        level: Level,
        path: String,
        parent: Option<EntityId>,
    ) -> Result<EntityId, TopologyError> {
        let path: Arc<str> = path.into();
        if self.by_path.contains_key(&path) {
            return Err(src.invalid(at, field, format!("duplicate {level} `{path}`")));
        }
        let id = self.push(EntityInfo {
            level,
            path,
            parent,
        });
        Ok(id)
    }

    /// Appends an entity (the detector adds hosts it meets that the file does not list).
    pub fn push(&mut self, info: EntityInfo) -> EntityId {
        let id = EntityId(u32::try_from(self.entities.len()).expect("fewer than 2^32 entities"));
        self.by_path.insert(info.path.clone(), id);
        self.entities.push(info);
        id
    }

    /// Puts another entity in an appended one's place (the detector reuses the ids of
    /// hosts it forgot): the old path no longer finds it, the new one does.
    pub fn reuse(&mut self, id: EntityId, info: EntityInfo) {
        self.unlist(id);
        self.by_path.insert(info.path.clone(), id);
        self.entities[id.index()] = info;
    }

    /// Makes an appended entity unfindable by its path (forgotten, kept for reuse).
    pub fn unlist(&mut self, id: EntityId) {
        let path = self.entities[id.index()].path.clone();
        if self.by_path.get(&path) == Some(&id) {
            self.by_path.remove(&path);
        }
    }

    fn parent(
        &self,
        src: &Source<'_>,
        reference: &Spanned<String>,
        field: String,
        level: Level,
    ) -> Result<EntityId, TopologyError> {
        match self.by_path.get(reference.get_ref().as_str()) {
            Some(&id) if self.entities[id.index()].level == level => Ok(id),
            Some(&id) => Err(src.invalid(
                reference,
                field,
                format!(
                    "`{}` is a {}, not a {level}",
                    reference.get_ref(),
                    self.entities[id.index()].level
                ),
            )),
            None => Err(src.invalid(
                reference,
                field,
                format!("unknown {level} `{}`", reference.get_ref()),
            )),
        }
    }

    /// Where `ip` sits: an explicit host address wins, then the longest rack prefix.
    pub fn locate(&self, ip: IpAddr) -> Placement {
        if let Some(&id) = self.host_addresses.get(&ip) {
            return Placement::Host(id);
        }
        let lengths = if ip.is_ipv4() {
            &self.lengths_v4
        } else {
            &self.lengths_v6
        };
        for &len in lengths {
            if let Some(&rack) = self.prefixes.get(&(mask(ip, len), len)) {
                return Placement::InRack(rack);
            }
        }
        Placement::Unplaced
    }

    /// The host path of `ip`: `dc-a/c1/r3/web-7`, `dc-a/c1/r3/10.1.3.77` for an unlisted
    /// address in a rack prefix, or `unplaced/10.9.9.9`.
    pub fn host_path(&self, ip: IpAddr) -> String {
        match self.locate(ip) {
            Placement::Host(id) => self.entities[id.index()].path.to_string(),
            Placement::InRack(rack) => format!("{}/{ip}", self.entities[rack.index()].path),
            Placement::Unplaced => format!("{UNPLACED}/{ip}"),
        }
    }

    /// The entity at each level on the way up from `id` (itself at its own level);
    /// None below its level and where a level is missing (an unplaced host has no rack).
    pub fn ancestors(&self, id: EntityId) -> PerLevel<Option<EntityId>> {
        let mut out = PerLevel::default();
        let mut at = Some(id);
        while let Some(e) = at {
            let info = self.entity(e);
            out[info.level] = Some(e);
            at = info.parent;
        }
        out
    }

    /// The addresses the file lists for host `id`, in file order; empty for any other
    /// entity and for hosts the detector added.
    pub fn addresses(&self, id: EntityId) -> &[IpAddr] {
        self.addresses_of.get(&id).map_or(&[], Vec::as_slice)
    }

    pub fn entity(&self, id: EntityId) -> &EntityInfo {
        &self.entities[id.index()]
    }

    pub fn entities(&self) -> &[EntityInfo] {
        &self.entities
    }

    pub fn find(&self, path: &str) -> Option<EntityId> {
        self.by_path.get(path).copied()
    }

    pub fn len(&self) -> usize {
        self.entities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// Counts per level, for `topology check`.
    pub fn counts(&self) -> [(Level, usize); 4] {
        Level::ALL.map(|level| {
            (
                level,
                self.entities.iter().filter(|e| e.level == level).count(),
            )
        })
    }

    pub fn prefix_count(&self) -> usize {
        self.prefixes.len()
    }
}

fn check_name<'a>(
    src: &Source<'_>,
    name: &'a Spanned<String>,
    field: String,
) -> Result<&'a str, TopologyError> {
    let text = name.get_ref().as_str();
    // Names go into verdict paths, health service names, metric labels and log lines:
    // a control character or a quote in one would corrupt them all.
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if text.is_empty() || text.len() > MAX_NAME || !text.chars().all(safe) {
        return Err(src.invalid(
            name,
            field,
            format!(
                "name {text:?} must be 1 to {MAX_NAME} characters of letters, digits, `-`, `_` and `.`"
            ),
        ));
    }
    if text == UNPLACED {
        return Err(src.invalid(
            name,
            field,
            format!("`{UNPLACED}` is reserved: it names the addresses no rack holds"),
        ));
    }
    Ok(text)
}

/// The longest entity name.
const MAX_NAME: usize = 64;

fn parse_addr(text: &str) -> Result<IpAddr, String> {
    let ip = text
        .parse::<IpAddr>()
        .map_err(|_| format!("`{text}` is not an IPv4 or IPv6 address"))?;
    // The kernel reports a mapped peer as IPv4, so a mapped address would never match.
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        return Err(format!(
            "`{text}` is an IPv4-mapped address, which never matches: write {v4}"
        ));
    }
    Ok(ip)
}

/// `10.1.1.0/24` → (10.1.1.0, 24); refuses host bits, so a typo is not silently widened.
fn parse_prefix(text: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}` is not a prefix like 10.1.1.0/24"))?;
    let addr = parse_addr(addr)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("`{text}`: prefix length must be 0..={max}"))?;
    if len == 0 {
        return Err(format!(
            "`{text}` holds every address: a rack's prefix is the rack's own"
        ));
    }
    if mask(addr, len) != addr {
        return Err(format!(
            "`{text}` has host bits set (did you mean {}/{len}?)",
            mask(addr, len)
        ));
    }
    Ok((addr, len))
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

#[cfg(test)]
mod tests;
