//! Rust release workload without frame pointers (rustc's default on x86_64):
//! main -> a -> b -> c -> d -> e -> leaf. Usage: rust_chain SECONDS
use std::hint::black_box;
use std::time::{Duration, Instant};

#[inline(never)]
fn leaf(n: u64) -> u64 {
    let mut pad = [0u64; 8];
    let mut x = n;
    for i in 0..200_000u64 {
        pad[(i & 7) as usize] = x;
        x = x.wrapping_mul(6364136223846793005).wrapping_add(black_box(pad)[((i + 3) & 7) as usize]);
    }
    x
}

#[inline(never)]
fn e(n: u64) -> u64 { black_box(leaf(black_box(n))) ^ 1 }
#[inline(never)]
fn d(n: u64) -> u64 { let v = vec![n; 4]; black_box(e(black_box(v[1]))) ^ 2 }
#[inline(never)]
fn c(n: u64) -> u64 { black_box(d(black_box(n + 1))) ^ 3 }
#[inline(never)]
fn b(n: u64) -> u64 { let s = format!("{n}"); black_box(c(black_box(s.len() as u64 + n))) ^ 4 }
#[inline(never)]
fn a(n: u64) -> u64 { black_box(b(black_box(n))) ^ 5 }

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    let mut sum = 0u64;
    while Instant::now() < end {
        sum = sum.wrapping_add(a(n));
        n += 1;
    }
    println!("{}", black_box(sum) & 1);
}
