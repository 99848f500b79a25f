//! Measures whether batching sends through io_uring pays for a sweep of
//! small messages to thousands of sockets on loopback (the `receivers`
//! workload without the relay around it). One thread (CPU 0) writes a
//! 1040-byte message to every socket, a sweep every `period` ms; another
//! (CPU 1) reads them all with epoll. Modes alternate block by block (20
//! sweeps each): `send` (one syscall per socket, `MSG_DONTWAIT`) and
//! `uring` (SEND requests in batches of 256, one `io_uring_enter` each).
//! Prints the sender thread's CPU time per message per block and the
//! median ratio, and fails if any byte did not arrive.
//!
//!     cargo run --release --example uring_sweep -- 9000 100 6
//!
//! (sockets, ms between sweeps, block pairs; each socket costs two file
//! descriptors here.)
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pin(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(15000, |s| s.parse().unwrap());
    let period_ms: u64 = args.get(2).map_or(100, |s| s.parse().unwrap());
    let blocks: usize = args.get(3).map_or(10, |s| s.parse().unwrap());
    let sweeps_per_block = 20;
    let batch = 256;
    let msg = vec![0xabu8; 1040];

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut rx = Vec::with_capacity(n);
    let mut tx = Vec::with_capacity(n);
    for _ in 0..n {
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        c.set_nonblocking(true).unwrap();
        rx.push(c);
        tx.push(s);
    }
    let got = Arc::new(AtomicU64::new(0));
    let got2 = got.clone();
    std::thread::spawn(move || {
        pin(1);
        let ep = unsafe { libc::epoll_create1(0) };
        for (i, c) in rx.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, c.as_raw_fd(), &mut ev) };
        }
        let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut buf = vec![0u8; 4096];
        loop {
            let k = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 1024, -1) };
            for e in &evs[..k.max(0) as usize] {
                let mut c = &rx[e.u64 as usize];
                while let Ok(m) = c.read(&mut buf) {
                    if m == 0 {
                        break;
                    }
                    got2.fetch_add(m as u64, Ordering::Relaxed);
                }
            }
        }
    });
    pin(0);
    let mut ring = io_uring::IoUring::new(1024).unwrap();
    let fds: Vec<i32> = tx.iter().map(|s| s.as_raw_fd()).collect();
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    let mut sent_total = 0u64;
    let mut results: Vec<(&str, f64, f64)> = Vec::new();
    let mut next = Instant::now();
    for b in 0..blocks * 2 {
        let uring = b % 2 == 1;
        let mut cpu = Duration::ZERO;
        let mut wall = Duration::ZERO;
        for _ in 0..sweeps_per_block {
            next += Duration::from_millis(period_ms);
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            let (c0, w0) = (thread_cpu(), Instant::now());
            if !uring {
                for &fd in &fds {
                    let r = unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), flags) };
                    assert_eq!(r as usize, msg.len(), "short send");
                }
            } else {
                for chunk in fds.chunks(batch) {
                    {
                        let mut sq = ring.submission();
                        for (i, &fd) in chunk.iter().enumerate() {
                            let e = io_uring::opcode::Send::new(
                                io_uring::types::Fd(fd),
                                msg.as_ptr(),
                                msg.len() as u32,
                            )
                            .flags(flags)
                            .build()
                            .user_data(i as u64);
                            unsafe { sq.push(&e).unwrap() };
                        }
                    }
                    ring.submit_and_wait(chunk.len()).unwrap();
                    for c in ring.completion() {
                        assert_eq!(c.result() as usize, msg.len(), "uring send {}", c.result());
                    }
                }
            }
            cpu += thread_cpu() - c0;
            wall += w0.elapsed();
            sent_total += (fds.len() * msg.len()) as u64;
        }
        let per = (sweeps_per_block * fds.len()) as f64;
        results.push((
            if uring { "uring" } else { "send" },
            cpu.as_nanos() as f64 / per,
            wall.as_nanos() as f64 / per,
        ));
    }
    std::thread::sleep(Duration::from_millis(500));
    let g = got.load(Ordering::Relaxed);
    assert_eq!(g, sent_total, "bytes lost");
    for (m, c, w) in &results {
        println!("{m:5} cpu {c:7.0} ns/msg  wall {w:7.0} ns/msg");
    }
    let med = |m: &str, f: fn(&(&str, f64, f64)) -> f64| {
        let mut v: Vec<f64> = results.iter().filter(|r| r.0 == m).map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (sc, uc) = (med("send", |r| r.1), med("uring", |r| r.1));
    let pairs: Vec<String> = results
        .chunks(2)
        .map(|p| format!("{:.2}", p[1].1 / p[0].1))
        .collect();
    println!(
        "median cpu/msg: send {sc:.0} ns, uring {uc:.0} ns, uring/send {:.2} (per block pair: {})",
        uc / sc,
        pairs.join(", ")
    );
    println!("all {g} bytes arrived");
}
