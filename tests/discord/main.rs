//! The real bot end to end against the loopback fake Discord (tests/support/fake_discord), with
//! the random-weight tiny models on the CPU; the `floor33 serve` binary for startup, SIGTERM and
//! restart. One test binary, one link.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod burst;
mod buttons;
mod download_policy;
mod expand;
mod fake_payloads;
mod faults;
mod i2v;
mod log_redaction;
mod ops;
mod restart;
mod roles;
mod serve_binary;
mod t2v;
