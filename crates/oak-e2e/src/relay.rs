//! A UDP relay that adds an adjustable delay, standing in for `tc netem` on kernels without the
//! `sch_netem` qdisc: a worker advertises the relay as its public tunnel address, so every
//! datagram peers send it (data and round-trip probes) is delayed on the way in and every answer
//! on the way back.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

const READ_TIMEOUT: Duration = Duration::from_millis(100);

struct Delivery {
    at: Instant,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
}

/// Forwards datagrams from `listen` to `target` (one upstream socket per sender, like a NAT) and
/// answers back, each way after [`DelayRelay::set_delay`].
pub struct DelayRelay {
    delay_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    listen: SocketAddrV4,
}

impl DelayRelay {
    pub fn start(listen: SocketAddrV4, target: SocketAddrV4) -> Result<DelayRelay> {
        let front = Arc::new(UdpSocket::bind(listen).with_context(|| format!("relay: binding {listen}"))?);
        front.set_read_timeout(Some(READ_TIMEOUT))?;
        let delay_us = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Delivery>();
        let mut threads = Vec::new();
        // One sender thread keeps the order; the delay is the same for packets in a row.
        {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(d) = rx.recv_timeout(READ_TIMEOUT) else { continue };
                    let now = Instant::now();
                    if d.at > now {
                        std::thread::sleep(d.at - now);
                    }
                    let _ = d.socket.send_to(&d.data, d.to);
                }
            }));
        }
        let upstreams: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
        {
            let (stop, delay_us, front) = (stop.clone(), delay_us.clone(), front.clone());
            let ups = upstreams.clone();
            let tx = tx.clone();
            let back_threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else { continue };
                    let up = {
                        let mut ups = ups.lock().unwrap();
                        match ups.get(&from) {
                            Some(up) => up.clone(),
                            None => {
                                let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else { continue };
                                let _ = sock.set_read_timeout(Some(READ_TIMEOUT));
                                let up = Arc::new(sock);
                                ups.insert(from, up.clone());
                                // Answers to this sender go back through the front socket.
                                let (up2, front2, tx2, stop2, delay2) =
                                    (up.clone(), front.clone(), tx.clone(), stop.clone(), delay_us.clone());
                                back_threads.lock().unwrap().push(std::thread::spawn(move || {
                                    let mut buf = vec![0u8; 65_536];
                                    while !stop2.load(Ordering::Relaxed) {
                                        let Ok((n, _)) = up2.recv_from(&mut buf) else { continue };
                                        let at = Instant::now() + Duration::from_micros(delay2.load(Ordering::Relaxed));
                                        let _ = tx2.send(Delivery {
                                            at,
                                            socket: front2.clone(),
                                            to: from,
                                            data: buf[..n].to_vec(),
                                        });
                                    }
                                }));
                                up
                            }
                        }
                    };
                    let at = Instant::now() + Duration::from_micros(delay_us.load(Ordering::Relaxed));
                    let _ = tx.send(Delivery { at, socket: up, to: SocketAddr::V4(target), data: buf[..n].to_vec() });
                }
                for t in std::mem::take(&mut *back_threads.lock().unwrap()) {
                    let _ = t.join();
                }
            }));
        }
        Ok(DelayRelay { delay_us, stop, threads, listen })
    }

    /// Delay added in each direction.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us.store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.listen
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_both_ways_with_the_delay() {
        let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
        let echo_addr = match echo.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            for _ in 0..2 {
                let (n, from) = echo.recv_from(&mut buf).unwrap();
                echo.send_to(&buf[..n], from).unwrap();
            }
        });
        let port = {
            let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let relay = DelayRelay::start(SocketAddrV4::new([127, 0, 0, 1].into(), port), echo_addr).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];

        let t = Instant::now();
        client.send_to(b"fast", relay.addr()).unwrap();
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"fast");
        let fast = t.elapsed();

        relay.set_delay(Duration::from_millis(40));
        let t = Instant::now();
        client.send_to(b"slow", relay.addr()).unwrap();
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"slow");
        let slow = t.elapsed();
        assert!(slow >= Duration::from_millis(80), "two delayed legs: {slow:?}");
        assert!(fast < Duration::from_millis(40), "no delay set: {fast:?}");
    }
}
