//! The root's address pools of the overlay network (spec `oakestra-net.md` §2.1): worker
//! subnets (`/26` blocks from `10.18.0.0` to `10.29.255.192`) and service IPs (`10.30.x.y`,
//! `x, y` in `0..=253`, shared by instance IPs and round-robin IPs).
//!
//! Unlike the original, addresses are given back: [`Pool::release`] returns one to the pool,
//! and a released address is reused before fresh ones (lowest first), so a long-lived root does
//! not run dry. Pools are pure data; the root rebuilds them at start from what its documents hold
//! ([`Pool::mark_used`]), so no allocator state needs storing of its own.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

/// Why an address cannot be had or given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// Every address of the pool is in use.
    Exhausted(&'static str),
    /// The address is not one this pool hands out.
    OutOfRange { address: Ipv4Addr, pool: &'static str },
    /// The address is already in use.
    Taken(Ipv4Addr),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::Exhausted(pool) => write!(f, "no {pool} is free"),
            AddressError::OutOfRange { address, pool } => write!(f, "{address} is not a {pool}"),
            AddressError::Taken(address) => write!(f, "{address} is already in use"),
        }
    }
}

impl std::error::Error for AddressError {}

/// The addresses of one pool, numbered `0..size`.
pub trait Space {
    const NAME: &'static str;
    fn size() -> u32;
    fn address(index: u32) -> Ipv4Addr;
    fn index(address: Ipv4Addr) -> Option<u32>;
}

/// Service IPs: `10.30.x.y` with `x, y` in `0..=253` (64,516 addresses; `.254` and `.255` are
/// never used, as in the original).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceIps;

impl Space for ServiceIps {
    const NAME: &'static str = "service IP in 10.30.0.0/16";
    fn size() -> u32 {
        254 * 254
    }
    fn address(index: u32) -> Ipv4Addr {
        Ipv4Addr::new(10, 30, (index / 254) as u8, (index % 254) as u8)
    }
    fn index(address: Ipv4Addr) -> Option<u32> {
        let [a, b, x, y] = address.octets();
        (a == 10 && b == 30 && x < 254 && y < 254).then(|| u32::from(x) * 254 + u32::from(y))
    }
}

/// Worker subnets: the `/26` blocks `10.18.0.0` … `10.29.255.192` (12,288 subnets).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerSubnets;

impl Space for WorkerSubnets {
    const NAME: &'static str = "worker subnet (a /26 in 10.18.0.0 to 10.29.255.192)";
    fn size() -> u32 {
        12 * 256 * 4
    }
    fn address(index: u32) -> Ipv4Addr {
        let second = 18 + index / 1024;
        let third = (index % 1024) / 4;
        let fourth = (index % 4) * 64;
        Ipv4Addr::new(10, second as u8, third as u8, fourth as u8)
    }
    fn index(address: Ipv4Addr) -> Option<u32> {
        let [a, b, c, d] = address.octets();
        (a == 10 && (18..30).contains(&b) && d % 64 == 0)
            .then(|| (u32::from(b) - 18) * 1024 + u32::from(c) * 4 + u32::from(d) / 64)
    }
}

/// A pool of addresses of one [`Space`]: what is in use, and the lowest index never handed out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pool<S> {
    used: BTreeSet<u32>,
    /// Released indices below `fresh`, reused first.
    free: BTreeSet<u32>,
    /// Every index from here on is unused.
    fresh: u32,
    space: std::marker::PhantomData<S>,
}

pub type ServiceIpPool = Pool<ServiceIps>;
pub type SubnetPool = Pool<WorkerSubnets>;

impl<S: Space> Pool<S> {
    pub fn new() -> Self {
        Pool { used: BTreeSet::new(), free: BTreeSet::new(), fresh: 0, space: std::marker::PhantomData }
    }

    /// The next address: a released one if any (lowest first), else a fresh one.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, AddressError> {
        let index = match self.free.pop_first() {
            Some(i) => i,
            None if self.fresh < S::size() => {
                let i = self.fresh;
                self.fresh += 1;
                i
            }
            None => return Err(AddressError::Exhausted(S::NAME)),
        };
        self.used.insert(index);
        self.skip_used();
        Ok(S::address(index))
    }

    /// Takes a given address (a descriptor's `rr_ip`, or one found in a stored document).
    pub fn claim(&mut self, address: Ipv4Addr) -> Result<(), AddressError> {
        let index = S::index(address).ok_or(AddressError::OutOfRange { address, pool: S::NAME })?;
        if self.used.contains(&index) {
            return Err(AddressError::Taken(address));
        }
        self.take(index);
        Ok(())
    }

    /// Like [`Pool::claim`], but an address already in use is fine (rebuilding from documents
    /// that may name one twice is not this pool's business to refuse).
    pub fn mark_used(&mut self, address: Ipv4Addr) -> Result<(), AddressError> {
        let index = S::index(address).ok_or(AddressError::OutOfRange { address, pool: S::NAME })?;
        self.take(index);
        Ok(())
    }

    /// Gives an address back; returns whether it was in use.
    pub fn release(&mut self, address: Ipv4Addr) -> bool {
        let Some(index) = S::index(address) else { return false };
        if !self.used.remove(&index) {
            return false;
        }
        if index + 1 == self.fresh {
            // The newest one: shrink the fresh range (and with it any free tail).
            self.fresh = index;
            while let Some(&last) = self.free.last() {
                if last + 1 != self.fresh {
                    break;
                }
                self.free.remove(&last);
                self.fresh = last;
            }
        } else {
            self.free.insert(index);
        }
        true
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        S::index(address).is_some_and(|i| self.used.contains(&i))
    }

    /// Addresses in use.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    fn take(&mut self, index: u32) {
        self.used.insert(index);
        if index >= self.fresh {
            // Everything skipped over becomes free.
            self.free.extend(self.fresh..index);
            self.fresh = index + 1;
        } else {
            self.free.remove(&index);
        }
        self.skip_used();
    }

    /// Keeps `fresh` past indices claimed out of order.
    fn skip_used(&mut self) {
        while self.fresh < S::size() && self.used.contains(&self.fresh) {
            self.fresh += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn service_ips_walk_the_range_skipping_254_and_255() {
        let mut pool = ServiceIpPool::new();
        assert_eq!(pool.allocate().unwrap(), ip("10.30.0.0"));
        assert_eq!(pool.allocate().unwrap(), ip("10.30.0.1"));
        for _ in 2..254 {
            pool.allocate().unwrap();
        }
        assert_eq!(pool.allocate().unwrap(), ip("10.30.1.0"), "10.30.0.254 and .255 are never used");
        assert_eq!(ServiceIps::address(ServiceIps::size() - 1), ip("10.30.253.253"));
        for bad in ["10.30.0.254", "10.30.254.0", "10.31.0.1", "192.168.0.1"] {
            assert!(matches!(pool.claim(ip(bad)), Err(AddressError::OutOfRange { .. })), "{bad}");
        }
    }

    #[test]
    fn worker_subnets_are_26_blocks_from_10_18() {
        let mut pool = SubnetPool::new();
        let first: Vec<Ipv4Addr> = (0..5).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(first, ["10.18.0.0", "10.18.0.64", "10.18.0.128", "10.18.0.192", "10.18.1.0"].map(ip));
        assert_eq!(WorkerSubnets::address(1023), ip("10.18.255.192"));
        assert_eq!(WorkerSubnets::address(1024), ip("10.19.0.0"));
        assert_eq!(WorkerSubnets::address(WorkerSubnets::size() - 1), ip("10.29.255.192"));
        for i in [0, 1, 1023, 1024, 12_287] {
            assert_eq!(WorkerSubnets::index(WorkerSubnets::address(i)), Some(i));
        }
        for bad in ["10.18.0.1", "10.30.0.0", "10.17.255.192", "11.18.0.0"] {
            assert_eq!(WorkerSubnets::index(ip(bad)), None, "{bad}");
        }
    }

    #[test]
    fn released_addresses_are_reused_lowest_first() {
        let mut pool = ServiceIpPool::new();
        let a: Vec<Ipv4Addr> = (0..5).map(|_| pool.allocate().unwrap()).collect();
        assert!(pool.release(a[3]));
        assert!(pool.release(a[1]));
        assert!(!pool.release(a[1]), "released twice");
        assert!(!pool.release(ip("10.30.9.9")), "never handed out");
        assert_eq!(pool.allocate().unwrap(), a[1]);
        assert_eq!(pool.allocate().unwrap(), a[3]);
        assert_eq!(pool.allocate().unwrap(), ip("10.30.0.5"));
        // Releasing the newest shrinks the fresh range, free tail included.
        let mut pool = ServiceIpPool::new();
        let b: Vec<Ipv4Addr> = (0..4).map(|_| pool.allocate().unwrap()).collect();
        pool.release(b[2]);
        pool.release(b[3]);
        assert_eq!(pool, {
            let mut p = ServiceIpPool::new();
            p.allocate().unwrap();
            p.allocate().unwrap();
            p
        });
    }

    #[test]
    fn claimed_addresses_are_skipped_and_double_claims_refused() {
        let mut pool = ServiceIpPool::new();
        pool.claim(ip("10.30.0.2")).unwrap();
        assert_eq!(pool.claim(ip("10.30.0.2")), Err(AddressError::Taken(ip("10.30.0.2"))));
        pool.mark_used(ip("10.30.0.2")).unwrap();
        let got: Vec<Ipv4Addr> = (0..3).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(got, ["10.30.0.0", "10.30.0.1", "10.30.0.3"].map(ip));
        assert!(pool.contains(ip("10.30.0.2")));
        assert_eq!(pool.len(), 4);
        // Rebuilt from documents in any order, the pool hands out what is not named.
        let mut rebuilt = ServiceIpPool::new();
        for a in ["10.30.0.7", "10.30.0.1", "10.30.0.3"] {
            rebuilt.mark_used(ip(a)).unwrap();
        }
        let got: Vec<Ipv4Addr> = (0..6).map(|_| rebuilt.allocate().unwrap()).collect();
        assert_eq!(got, ["10.30.0.0", "10.30.0.2", "10.30.0.4", "10.30.0.5", "10.30.0.6", "10.30.0.8"].map(ip));
    }

    #[test]
    fn an_exhausted_pool_says_so_until_something_is_released() {
        let mut pool = SubnetPool::new();
        let all: Vec<Ipv4Addr> = (0..WorkerSubnets::size()).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(all.last(), Some(&ip("10.29.255.192")));
        let err = pool.allocate().unwrap_err();
        assert_eq!(err, AddressError::Exhausted(WorkerSubnets::NAME));
        assert!(err.to_string().starts_with("no worker subnet"), "{err}");
        pool.release(ip("10.20.3.64"));
        assert_eq!(pool.allocate().unwrap(), ip("10.20.3.64"));
        assert!(pool.allocate().is_err());
    }
}
