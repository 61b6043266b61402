//! Floor of the per-frame server cost on loopback TCP: one process writes a
//! payload to N connections per round (one send each, like a fan-out server
//! with a free user space); a child process reads them all with epoll.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn cpu_self() -> (f64, f64) {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

fn receiver(port: u16, n: usize) {
    let mut socks = Vec::new();
    for i in 0..n {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nonblocking(true).unwrap();
        socks.push(s);
        if i % 1000 == 999 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let ep = unsafe { libc::epoll_create1(0) };
    for (i, s) in socks.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: i as u64,
        };
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
    }
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = vec![0u8; 65536];
    let mut total = 0u64;
    let spin = std::env::var("SENDFLOOR_SPIN").is_ok_and(|v| v == "1");
    let mut idle_since = Instant::now();
    loop {
        // SENDFLOOR_SPIN=1: the reader never sleeps (epoll_wait with no
        // timeout, in a loop), so no send has to wake it: the difference
        // is what waking the reader costs the sender.
        let k = if spin {
            let k = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 1024, 0) };
            if k == 0 {
                if idle_since.elapsed() > Duration::from_secs(5) {
                    break;
                }
                continue;
            }
            idle_since = Instant::now();
            k
        } else {
            unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 1024, 5000) }
        };
        if k <= 0 {
            break;
        }
        for e in &evs[..k as usize] {
            let s = &mut socks[e.u64 as usize];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(m) => total += m as u64,
                    Err(_) => break,
                }
            }
        }
    }
    eprintln!("receiver read {total} bytes");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(|s| s.as_str()) == Some("recv") {
        receiver(args[2].parse().unwrap(), args[3].parse().unwrap());
        return;
    }
    let n: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(2000);
    let size: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(150);
    let rate: f64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(10.0);
    let secs: f64 = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(10.0);
    // How the sender sends: `write` (one blocking write per connection),
    // `uring` (io_uring SEND operations, `batch` per submission: fewer
    // system calls, the same TCP work), `null` (a getppid() per connection
    // instead of a send: the cost of a bare system call).
    let mode = args
        .get(5)
        .map(String::as_str)
        .unwrap_or("write")
        .to_string();
    let batch: usize = args.get(6).map(|s| s.parse().unwrap()).unwrap_or(256);
    assert!(
        ["write", "uring", "uring-fixed", "null"].contains(&mode.as_str()),
        "mode: write, uring, uring-fixed or null"
    );
    assert!((1..=4096).contains(&batch), "batch: 1..=4096");
    // SENDFLOOR_DEFER=1: a single-issuer ring whose completions run when
    // the submitter waits (IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN).
    let mut builder =
        io_uring::IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder();
    if std::env::var("SENDFLOOR_DEFER").is_ok_and(|v| v == "1") {
        builder.setup_single_issuer().setup_defer_taskrun();
    }
    let mut ring = builder.build(4096).expect("io_uring available");
    let nodelay = true;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut child = std::process::Command::new(&args[0])
        .args(["recv", &port.to_string(), &n.to_string()])
        .spawn()
        .unwrap();
    let mut conns = Vec::new();
    for _ in 0..n {
        let (s, _) = l.accept().unwrap();
        s.set_nodelay(nodelay).unwrap();
        conns.push(s);
    }
    if mode == "uring-fixed" {
        // Registered descriptors: no fget/fput per send.
        let fds: Vec<i32> = conns.iter().map(|c| c.as_raw_fd()).collect();
        ring.submitter()
            .register_files(&fds)
            .expect("register_files");
    }
    let payload = vec![0x42u8; size];
    std::thread::sleep(Duration::from_millis(500));
    let rounds = (rate * secs) as usize;
    let period = Duration::from_secs_f64(1.0 / rate);
    let (u0, s0) = cpu_self();
    let start = Instant::now();
    let mut sends = 0u64;
    for r in 0..rounds {
        match mode.as_str() {
            "write" => {
                for c in conns.iter_mut() {
                    c.write_all(&payload).unwrap();
                    sends += 1;
                }
            }
            "null" => {
                for _ in &conns {
                    unsafe { libc::getppid() };
                    sends += 1;
                }
            }
            _ => {
                for (k, chunk) in conns.chunks(batch).enumerate() {
                    for (j, c) in chunk.iter().enumerate() {
                        // Fd and Fixed are different types behind io_uring's
                        // sealed trait, so one macro builds both entries.
                        macro_rules! send_to {
                            ($target:expr) => {
                                io_uring::opcode::Send::new(
                                    $target,
                                    payload.as_ptr(),
                                    payload.len() as u32,
                                )
                                .build()
                            };
                        }
                        let send = if mode == "uring-fixed" {
                            send_to!(io_uring::types::Fixed((k * batch + j) as u32))
                        } else {
                            send_to!(io_uring::types::Fd(c.as_raw_fd()))
                        };
                        // SAFETY: `payload` outlives the wait below.
                        unsafe { ring.submission().push(&send).unwrap() };
                    }
                    ring.submit_and_wait(chunk.len()).unwrap();
                    for cqe in ring.completion() {
                        assert_eq!(cqe.result(), payload.len() as i32, "one whole send");
                        sends += 1;
                    }
                }
            }
        }
        let next = start + period * (r as u32 + 1);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    let (u1, s1) = cpu_self();
    let wall = start.elapsed().as_secs_f64();
    println!(
        "mode={mode} n={n} size={size} rate={rate}/s sends={sends} wall={wall:.1}s user={:.2}us/send sys={:.2}us/send total={:.2}us/send",
        (u1 - u0) * 1e6 / sends as f64, (s1 - s0) * 1e6 / sends as f64, ((u1 - u0) + (s1 - s0)) * 1e6 / sends as f64
    );
    drop(conns);
    let _ = child.wait();
}
